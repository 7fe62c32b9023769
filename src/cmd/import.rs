//! `corsair import`: converts other tools' CORS configuration into CorsPolicies.

use std::io::{Read, Write};
use std::process::ExitCode;

use corsair_import::{dedupe_names, finding_line, import, render};

/// Convert the CORS configuration in Kubernetes manifests into CorsPolicies.
#[derive(clap::Args)]
#[command(after_long_help = "\
Reads ingress-nginx Ingresses (enable-cors and cors-* annotations), Gateway API HTTPRoutes (CORS \
filters), Istio VirtualServices (corsPolicy), Envoy Gateway SecurityPolicies (cors), Traefik \
Middlewares (headers.accessControl*) and Deployments, StatefulSets, DaemonSets or Pods running \
Cloud Endpoints ESP/ESPv2 with --cors_* flags; other documents are skipped with a note.

Standard output: one CorsPolicy per source object, as YAML that kubectl apply -f - and corsair \
check accept, each followed by a comment saying how to opt the workloads in. Standard error: \
every finding, naming the file, the object and the annotation, flag or field.

Exit status: 0 when at least one policy was produced, 1 on unreadable or malformed input (the policies of the other documents and files are written all the same), 2 when \
nothing convertible was found.")]
pub struct Args {
    /// Manifest files (multi-document YAML or JSON); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut failed = false;
    // Every file first, so that names are made unique across files before anything is printed.
    let mut converted: Vec<(String, corsair_import::Converted)> = Vec::new();
    for file in &args.files {
        let (name, bytes) = match read(file) {
            Ok(read) => read,
            Err(e) => {
                writeln!(stderr, "{file}: error: cannot read: {e}")?;
                failed = true;
                continue;
            }
        };
        let result = match import(&bytes) {
            Ok(result) => result,
            Err(e) => {
                writeln!(stderr, "{name}: error: {e}")?;
                failed = true;
                continue;
            }
        };
        for error in &result.errors {
            writeln!(stderr, "{name}: error: {error}")?;
            failed = true;
        }
        for skipped in &result.skipped {
            writeln!(
                stderr,
                "{}",
                finding_line(&name, skipped.source.as_ref(), &skipped.finding)
            )?;
        }
        converted.extend(result.policies.into_iter().map(|p| (name.clone(), p)));
    }
    let mut policies: Vec<corsair_import::Converted> =
        converted.iter().map(|(_, p)| p.clone()).collect();
    dedupe_names(&mut policies);
    for ((name, _), policy) in converted.iter().zip(&policies) {
        for finding in &policy.findings {
            writeln!(
                stderr,
                "{}",
                finding_line(name, Some(&policy.source), finding)
            )?;
        }
        write!(stdout, "{}", render(policy, name)?)?;
    }
    let produced = policies.len();
    writeln!(stderr, "corsair import: {produced} policy(ies) written")?;
    Ok(if failed {
        ExitCode::from(1)
    } else if produced == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn read(file: &str) -> std::io::Result<(String, Vec<u8>)> {
    if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().lock().read_to_end(&mut bytes)?;
        Ok(("<stdin>".to_owned(), bytes))
    } else {
        Ok((file.to_owned(), std::fs::read(file)?))
    }
}
