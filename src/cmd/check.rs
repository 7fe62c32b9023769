//! `corsair check`: the same validation the proxy and the controller apply, for CI pipelines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use corsair_policy::{Engine, Report, Severity, load_document};

/// Validate and lint policy files.
#[derive(clap::Args)]
pub struct Args {
    /// Policy files: CorsPolicy manifests (YAML) or rendered policies (JSON).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mut errors, mut warnings) = (0usize, 0usize);
    for file in &args.files {
        match check_file(file) {
            Ok(report) => {
                for finding in &report.findings {
                    let label = match finding.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    };
                    println!("{}: {label}[{}]: {finding}", file.display(), finding.code);
                }
                errors += report.errors().count();
                warnings += report.warnings().count();
            }
            Err(message) => {
                println!("{}: error: {message}", file.display());
                errors += 1;
            }
        }
    }
    println!(
        "{} file(s) checked: {errors} error(s), {warnings} warning(s)",
        args.files.len()
    );
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads and compiles one file. `Err` is a problem that stops reading it at all.
fn check_file(file: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let doc = load_document(&text).map_err(|e| e.to_string())?;
    Ok(match Engine::compile(&doc.spec) {
        Ok((_, report)) | Err(report) => report,
    })
}
