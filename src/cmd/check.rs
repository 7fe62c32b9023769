//! `corsair check`: the same validation the proxy and the controller apply, for CI pipelines.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use corsair_policy::{Checked, Engine, Finding, Report, Severity, check_manifest, parse_manifests};

/// Validate and lint policy files.
///
/// Every problem of a document is reported in one run, each with a stable code, the field path
/// and the line and column where the field is written. Documents of other kinds are skipped with
/// a note.
#[derive(clap::Args)]
pub struct Args {
    /// Files to check: CorsPolicy manifests (YAML, any number of `---`-separated documents) or
    /// rendered policies (JSON). `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

#[derive(Default)]
struct Totals {
    errors: usize,
    warnings: usize,
    policies: usize,
    skipped: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut totals = Totals::default();
    for file in &args.files {
        let (name, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            let read = std::io::stdin().read_to_string(&mut text);
            ("<stdin>".to_owned(), read.map(|_| text))
        } else {
            (file.display().to_string(), std::fs::read_to_string(file))
        };
        match text {
            Ok(text) => check_text(&name, &text, &mut totals),
            Err(e) => {
                println!("{name}: error: cannot read: {e}");
                totals.errors += 1;
            }
        }
    }
    let Totals {
        errors,
        warnings,
        policies,
        skipped,
    } = totals;
    println!(
        "{} file(s) checked: {errors} error(s), {warnings} warning(s) in {policies} CorsPolicy document(s); {skipped} other document(s) skipped",
        args.files.len()
    );
    let none = policies == 0 && errors == 0;
    if none {
        println!("error: no CorsPolicy document found");
    }
    let failed = none || errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks every document of one file, printing a line per finding:
/// `FILE:LINE:COLUMN (CorsPolicy NAME): error[code]: path: message`, where the field is written
/// (its nearest written ancestor for a default; `FILE:LINE`, the document's start, for JSON).
fn check_text(file: &str, text: &str, totals: &mut Totals) {
    for manifest in parse_manifests(text) {
        let at = format!("{file}:{}", manifest.line);
        let doc = match manifest.value {
            Ok(doc) => doc,
            Err(e) => {
                println!("{at}: error: {e}");
                totals.errors += 1;
                continue;
            }
        };
        match check_manifest(&doc) {
            Checked::Skipped { kind, api_version } => {
                let what = match (kind, api_version) {
                    (Some(kind), Some(version)) => format!("a {kind} ({version})"),
                    (Some(kind), None) => format!("a {kind}"),
                    (None, _) => "a document without a kind".to_owned(),
                };
                println!("{at}: note: skipped {what}: not a CorsPolicy");
                totals.skipped += 1;
            }
            Checked::Policy { name, spec, report } => {
                totals.policies += 1;
                let report = with_compile_findings(report, spec.as_ref());
                let policy = match name {
                    Some(name) => format!("(CorsPolicy {name})"),
                    None => "(CorsPolicy)".to_owned(),
                };
                for finding in &report.findings {
                    let severity = match finding.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    };
                    let at = match manifest.positions.of(&finding.path) {
                        Some((line, column)) => format!("{file}:{line}:{column}"),
                        None => at.clone(),
                    };
                    println!("{at} {policy}: {severity}[{}]: {finding}", finding.code);
                }
                totals.errors += report.errors().count();
                totals.warnings += report.warnings().count();
            }
        }
    }
}

/// Adds what only compiling finds (the engine's own limits) to a report without errors.
fn with_compile_findings(
    mut report: Report,
    spec: Option<&corsair_policy::CorsPolicySpec>,
) -> Report {
    let Some(spec) = spec.filter(|_| !report.has_errors()) else {
        return report;
    };
    if let Err(compiled) = Engine::compile(spec) {
        let new: Vec<Finding> = compiled
            .findings
            .into_iter()
            .filter(|f| !report.findings.contains(f))
            .collect();
        report.findings.extend(new);
    }
    report
}
