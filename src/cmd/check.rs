use std::path::PathBuf;
use std::process::ExitCode;

/// `corsair check FILE...`
#[derive(clap::Args)]
pub struct Args {
    /// Policy files: CorsPolicy manifests (YAML) or rendered policies (JSON).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Fail on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = (args.files, args.deny_warnings);
    anyhow::bail!("not implemented yet")
}
