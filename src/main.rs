//! `corsair`: one binary, one subcommand per role.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// A CORS gateway for Kubernetes.
#[derive(Parser)]
#[command(name = "corsair", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and lint policy files; exit 1 on any error.
    Check(cmd::check::Args),
    /// Show what the proxy would answer for a request, and why.
    Explain(cmd::explain::Args),
    /// Convert ingress-nginx, Gateway API, Istio, Envoy Gateway, Traefik and ESP CORS configuration into CorsPolicies.
    Import(cmd::import::Args),
    /// Run the operator in a cluster: reconcilers (leader-elected), admission webhooks, metrics.
    Controller(cmd::controller::Args),
    /// Print the CorsPolicy CustomResourceDefinition generated from the Rust types.
    Crd(cmd::crd::Args),
    /// Run an upstream, the proxy and a page on a second origin that shows allowed and blocked calls.
    Demo(cmd::demo::Args),
    /// Run the sidecar: enforce a policy file in front of one upstream, reloading it on change.
    Proxy(cmd::proxy::Args),
    /// Check that a running validating webhook accepts a valid CorsPolicy and refuses an invalid one.
    Probe(cmd::probe::Args),
    /// Serve the admission webhooks alone over HTTPS (POST /inject, POST /validate), no API server needed.
    Webhook(cmd::webhook::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cmd::check::run(args),
        Command::Explain(args) => cmd::explain::run(args),
        Command::Import(args) => cmd::import::run(args),
        Command::Controller(args) => cmd::controller::run(args),
        Command::Crd(args) => cmd::crd::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Webhook(args) => cmd::webhook::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests;
