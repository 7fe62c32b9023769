//! The text `corsair import` prints: policies on standard output, findings on standard error.

use crate::{Converted, Finding, ImportError, OptIn, SourceRef};

/// One policy as a YAML document (starting with `---`), with comments saying where it came from,
/// whether it must be completed, and how to opt the workloads in.
pub fn render(c: &Converted, file: &str) -> Result<String, ImportError> {
    let yaml =
        serde_saphyr::to_string(&c.document).map_err(|e| ImportError::Render(e.to_string()))?;
    let mut out = String::from("---\n");
    out.push_str(&format!(
        "# Converted from {} in {file} by corsair import.\n",
        c.source
    ));
    if c.incomplete {
        out.push_str(
            "# INCOMPLETE on purpose: corsair check and the validating webhook refuse it until the empty\n",
        );
        out.push_str(
            "# allowOrigins lists the origins that may send credentials (see the findings).\n",
        );
    }
    out.push_str(&yaml);
    if !yaml.ends_with('\n') {
        out.push('\n');
    }
    match &c.opt_in {
        OptIn::Command(cmd) => {
            out.push_str("# Opt the workload in:\n");
            for line in cmd.lines() {
                match line.strip_prefix("# ") {
                    Some(comment) => out.push_str(&format!("#   ({comment})\n")),
                    None => out.push_str(&format!("#   {line}\n")),
                }
            }
        }
        OptIn::Note(lines) => {
            out.push_str("# Opt the workloads in:\n");
            for line in lines {
                out.push_str(&format!("#   {line}\n"));
            }
        }
    }
    Ok(out)
}

/// `FILE: Kind ns/name: field: severity[code]: message`.
pub fn finding_line(file: &str, source: Option<&SourceRef>, f: &Finding) -> String {
    let source = source.map(|s| format!("{s}: ")).unwrap_or_default();
    format!(
        "{file}: {source}{}: {}[{}]: {}",
        f.field, f.severity, f.code, f.message
    )
}
