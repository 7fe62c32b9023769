//! `corsair-proxy`: the slim sidecar binary the webhook injects. The flags and environment
//! variables of `corsair proxy`, from the same definition, and nothing else linked: no kube, no
//! controller, no certificate code.
#![forbid(unsafe_code)]

use std::error::Error;
use std::process::ExitCode;

use clap::Parser as _;
use corsair_proxy::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The error and its causes on one line, as `corsair proxy` prints them.
            let mut message = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
