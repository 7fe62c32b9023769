//! `corsair proxy`: the sidecar. Its flags are defined once, in `corsair_proxy::cli`, and shared
//! with the slim `corsair-proxy` binary that the webhook injects.

use std::process::ExitCode;

pub use corsair_proxy::cli::Args;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    corsair_proxy::cli::run(args)?;
    Ok(ExitCode::SUCCESS)
}
