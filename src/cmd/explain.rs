use std::path::PathBuf;
use std::process::ExitCode;

/// `corsair explain --policy FILE --origin O ...`
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    policy: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args.policy;
    anyhow::bail!("not implemented yet")
}
