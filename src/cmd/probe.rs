//! `corsair probe`: check that a running validating webhook answers as it must. The chart's
//! `helm test` hook runs it against the webhook's Service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use corsair_controller::webhook::{ProbeTarget, probe};

/// `corsair probe --url https://SERVICE.NAMESPACE.svc/validate --ca-file ca.crt`
#[derive(clap::Args)]
pub struct Args {
    /// URL of the validating webhook: `https://HOST[:PORT]/validate`. The host must be a name in
    /// the webhook's certificate (the Service's `NAME.NAMESPACE.svc`).
    #[arg(long, env = "CORSAIR_PROBE_URL")]
    url: String,
    /// PEM file of the CA that signed the webhook's certificate (`ca.crt` of its TLS Secret).
    #[arg(long, env = "CORSAIR_PROBE_CA_FILE")]
    ca_file: PathBuf,
    /// Seconds to wait for each answer (connection, TLS handshake and response).
    #[arg(long, default_value_t = 10, env = "CORSAIR_PROBE_TIMEOUT")]
    timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ca_pem = std::fs::read(&args.ca_file)
        .with_context(|| format!("cannot read the CA file {}", args.ca_file.display()))?;
    let target = ProbeTarget {
        url: args.url,
        ca_pem,
        timeout: Duration::from_secs(args.timeout),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(probe(&target)) {
        Ok(passed) => {
            for line in passed {
                println!("ok: {line}");
            }
            println!("the webhook at {} answers as it must", target.url);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
