//! `corsair crd`: print the CorsPolicy CustomResourceDefinition generated from the Rust types.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

/// Print the CorsPolicy CRD (YAML) to stdout, for `kubectl apply -f -` or `deploy/crd.yaml`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let yaml = corsair_controller::crd::crd_yaml().context("serialising the CRD")?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the CRD to stdout")?;
    Ok(ExitCode::SUCCESS)
}
