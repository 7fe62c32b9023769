//! `corsair import`: converts the CORS configuration of other tools into `CorsPolicy` documents.
//!
//! Reads Kubernetes manifests (multi-document YAML or JSON, `List`s expanded) and converts every
//! CORS configuration it knows: ingress-nginx `Ingress` annotations, Gateway API `HTTPRoute` CORS
//! filters, Istio `VirtualService` `corsPolicy`, Envoy Gateway `SecurityPolicy` `cors`, Traefik
//! `Middleware` `headers.accessControl*`, and Cloud Endpoints ESP/ESPv2 `--cors_*` flags.
//!
//! The conversion keeps what browsers saw, not the source's words, and is never more open than
//! the source. Every change of meaning, and every value browsers ignored, is a [`Finding`] naming
//! the annotation, flag or field. Pure: the caller hands in bytes and a file name.
#![forbid(unsafe_code)]

use corsair_policy::model::{API_VERSION, DocumentMeta, KIND, MAX_NAME_LEN};
use corsair_policy::{CorsPolicySpec, Engine, PolicyDocument, Severity as CheckSeverity};
use serde_json::Value;

mod example;
mod render;
mod rules;
mod sources;

pub use render::{finding_line, render};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The policy says it differently, but browsers see no difference.
    Note,
    /// Browsers see a difference (towards less open, unless the message says MORE open: what a
    /// policy cannot express, such as Istio's string prefixes), or part of the source was not
    /// converted.
    Warning,
    /// The policy is left incomplete on purpose; `corsair check` refuses it until it is completed.
    Incomplete,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Incomplete => "incomplete",
        })
    }
}

/// One thing the user should know about a conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// A stable identifier (`wildcard-credentials-dropped`, `origin-anchored`, …); tests key on it.
    pub code: &'static str,
    /// The annotation, flag or field of the source it is about
    /// (`nginx.ingress.kubernetes.io/cors-allow-origin`, `--cors_max_age`, `spec.rules[0]…`).
    pub field: String,
    pub message: String,
}

/// The object a policy or finding comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// 0-based position of the document in the file (a YAML document, or a JSON value).
    pub document: usize,
}

/// Where an object sits in its file, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// 0-based position of the document in the file (a YAML document, or a JSON value).
    pub document: usize,
    /// 0-based position in the `List` (or top-level sequence) the document is, if it is one.
    pub item: Option<usize>,
    /// 1-based line of the file where the YAML document starts.
    pub line: Option<usize>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {}", self.document + 1)?;
        if let Some(item) = self.item {
            write!(f, ", item {}", item + 1)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// How to make the workloads behind the source use the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptIn {
    /// The source names the workload: the exact `kubectl annotate` command.
    Command(String),
    /// The source names only something in front of the workloads (a Service, a route): how to find them.
    Note(Vec<String>),
}

/// One converted source object.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub source: SourceRef,
    pub document: PolicyDocument,
    pub findings: Vec<Finding>,
    pub opt_in: OptIn,
    /// Left incomplete on purpose (see the `Incomplete` findings); `corsair check` refuses it.
    pub incomplete: bool,
}

/// A finding about a document that produced no policy (skipped, or nothing convertible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `None` when the document has no kind or name to show.
    pub source: Option<SourceRef>,
    pub finding: Finding,
}

/// Everything one file produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Import {
    pub policies: Vec<Converted>,
    pub skipped: Vec<Skipped>,
    /// Documents that are not Kubernetes objects at all ([`ImportError::NotAnObject`]); the
    /// file's other documents are converted all the same.
    pub errors: Vec<ImportError>,
}

/// The file could not be read as Kubernetes manifests, or one of its documents is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not UTF-8 text: {0}")]
    NotText(#[from] std::str::Utf8Error),
    /// The whole file, for JSON (YAML is read document by document: [`ImportError::Malformed`]).
    #[error("not YAML or JSON: {0}")]
    Syntax(String),
    /// One YAML document that does not parse; the file's other documents are converted.
    #[error("{place}: not YAML: {message}")]
    Malformed { place: Place, message: String },
    #[error("{place}: {message}")]
    NotAnObject { place: Place, message: String },
    #[error("cannot write the policy as YAML: {0}")]
    Render(String),
}

/// Converts every CORS configuration in one file's bytes.
pub fn import(bytes: &[u8]) -> Result<Import, ImportError> {
    let text = std::str::from_utf8(bytes)?;
    let mut out = Import::default();
    for (place, doc) in parse_documents(text, &mut out.errors)? {
        convert_document(place, &doc, &mut out);
    }
    dedupe_names(&mut out.policies);
    Ok(out)
}

/// Multi-document YAML, read one document at a time so that a malformed one costs only itself
/// (an error in `errors`, with its line), or JSON values (a stream, or an array); `kind: List`
/// (and `*List`) documents and top-level sequences are expanded into their items.
fn parse_documents(
    text: &str,
    errors: &mut Vec<ImportError>,
) -> Result<Vec<(Place, Value)>, ImportError> {
    let trimmed = text.trim_start();
    let raw: Vec<(Option<usize>, Value)> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: its own parser gives its own error positions; a stream of values is allowed.
        let mut values = Vec::new();
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            values.push((None, value.map_err(|e| ImportError::Syntax(e.to_string()))?));
        }
        values
    } else {
        // As kubectl reads YAML (1.1 scalars), documents split at their `---` lines.
        let mut values = Vec::new();
        for (document, manifest) in corsair_policy::parse_manifests(text)
            .into_iter()
            .enumerate()
        {
            match manifest.value {
                Ok(value) => values.push((Some(manifest.line), value)),
                Err(e) => {
                    errors.push(ImportError::Malformed {
                        place: Place {
                            document,
                            item: None,
                            line: Some(manifest.line),
                        },
                        message: e.to_string(),
                    });
                    // Keeps the numbering of the documents after it.
                    values.push((Some(manifest.line), Value::Null));
                }
            }
        }
        values
    };
    let mut docs = Vec::new();
    for (document, (line, value)) in raw.into_iter().enumerate() {
        let place = |item| Place {
            document,
            item,
            line,
        };
        let is_list = value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"));
        match value {
            Value::Array(items) => {
                docs.extend(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (place(Some(i)), v)),
                );
            }
            Value::Object(mut object)
                if is_list && object.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = object.remove("items") {
                    docs.extend(
                        items
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (place(Some(i)), v)),
                    );
                }
            }
            other => docs.push((place(None), other)),
        }
    }
    Ok(docs)
}

fn convert_document(place: Place, doc: &Value, out: &mut Import) {
    if doc.is_null() {
        return;
    }
    if !doc.is_object() {
        out.errors.push(ImportError::NotAnObject {
            place,
            message: "is not a mapping with apiVersion, kind and metadata".to_owned(),
        });
        return;
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let meta = doc.get("metadata");
    let source = SourceRef {
        kind: kind.to_owned(),
        name: meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        namespace: meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        document: place.document,
    };
    if let Err(message) = check_names(&source) {
        out.errors.push(ImportError::NotAnObject { place, message });
        return;
    }
    let result = sources::convert(api_version, doc, &source);
    match result {
        sources::Outcome::NotASource => out.skipped.push(Skipped {
            source: (!kind.is_empty()).then(|| source.clone()),
            finding: Finding {
                severity: Severity::Note,
                code: "skipped",
                field: "kind".to_owned(),
                message: if kind.is_empty() {
                    "no kind: not a Kubernetes object, skipped".to_owned()
                } else {
                    format!("{api_version} {kind} carries no CORS configuration this tool converts, skipped")
                },
            },
        }),
        sources::Outcome::Nothing(findings) => {
            for finding in findings {
                out.skipped.push(Skipped {
                    source: Some(source.clone()),
                    finding,
                });
            }
        }
        sources::Outcome::Policies(_) if source.name.is_empty() => {
            out.errors.push(ImportError::NotAnObject {
                place,
                message: format!(
                    "{kind} has no metadata.name, which the policy takes its name from: not converted"
                ),
            });
        }
        sources::Outcome::Policies(list) => {
            for draft in list {
                out.policies.push(finish(&source, draft));
            }
        }
    }
}

/// `metadata.name` and `metadata.namespace` as Kubernetes allows them (RFC 1123 names; a missing
/// name is left to the sources). They are written into the rendered policies' comments and
/// `kubectl` commands, where anything else (a line break, a quote) would be read as YAML or
/// shell, so a document with another name is refused, not converted.
fn check_names(source: &SourceRef) -> Result<(), String> {
    // Labels of lowercase letters, digits and '-', each starting and ending with a letter or
    // digit; several, joined by dots, where `dots`.
    fn rfc1123(name: &str, max: usize, dots: bool) -> bool {
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let label = |l: &str| {
            let bytes = l.as_bytes();
            bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        };
        name.len() <= max
            && (if dots {
                name.split('.').all(label)
            } else {
                label(name)
            })
    }
    if !source.name.is_empty() && !rfc1123(&source.name, 253, true) {
        return Err(format!(
            "metadata.name {:?} is not a Kubernetes object name (lowercase letters, digits, '-' \
             and '.', at most 253): not converted",
            source.name
        ));
    }
    match &source.namespace {
        Some(ns) if !rfc1123(ns, 63, false) => Err(format!(
            "metadata.namespace {ns:?} is not a Kubernetes namespace (lowercase letters, digits \
             and '-', at most 63): not converted"
        )),
        _ => Ok(()),
    }
}

/// Wraps a converted spec into a manifest and checks it with the policy engine, so that a policy
/// that `corsair check` would refuse never leaves without a finding that says why.
fn finish(source: &SourceRef, draft: sources::PolicyDraft) -> Converted {
    let sources::PolicyDraft {
        name,
        spec,
        mut findings,
        opt_in,
        incomplete,
    } = draft;
    let mut report = match Engine::compile(&spec) {
        Ok((_, report)) | Err(report) => report,
    };
    // What the CRD refuses by size (more than 128 origins, more than 64 routes), which the
    // engine does not.
    if let Ok(value) = serde_json::to_value(&spec) {
        corsair_policy::schema_bounds(&value, "spec", &mut report.findings);
    }
    for f in &report.findings {
        let (severity, code, what) = match f.severity {
            CheckSeverity::Warning => (Severity::Note, "check-warning", "warns"),
            CheckSeverity::Error if incomplete => (
                Severity::Incomplete,
                "check-refuses",
                "refuses it until it is completed",
            ),
            CheckSeverity::Error => (Severity::Warning, "check-error", "refuses it"),
        };
        findings.push(Finding {
            severity,
            code,
            field: format!("(policy) {}", f.path),
            message: format!("corsair check {what}: {}", f.message),
        });
    }
    Converted {
        source: source.clone(),
        document: PolicyDocument {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: DocumentMeta {
                name: Some(name),
                namespace: source.namespace.clone(),
                generation: None,
            },
            spec,
        },
        findings,
        opt_in,
        incomplete,
    }
}

/// Gives every policy a name the API server takes and no other policy of the output has. A
/// source name over [`MAX_NAME_LEN`] characters (Kubernetes allows 253 for most kinds) is
/// shortened. Two sources of the same name in one namespace (an Ingress and an HTTPRoute `web`)
/// would make two policies overwrite each other: the later ones get the source kind appended,
/// then a number. [`import`] does this within a file; call it again over the policies of several
/// files.
pub fn dedupe_names(policies: &mut [Converted]) {
    let mut seen: Vec<(Option<String>, String)> = Vec::new();
    for p in policies.iter_mut() {
        let ns = p.document.metadata.namespace.clone();
        let source_name = p.document.metadata.name.clone().unwrap_or_default();
        let name = shorten(&source_name);
        if name != source_name {
            p.findings.push(Finding {
                severity: Severity::Note,
                code: "renamed",
                field: "metadata.name".to_owned(),
                message: format!(
                    "{source_name:?} is longer than the {MAX_NAME_LEN} characters a CorsPolicy name may have: this one is {name:?}"
                ),
            });
        }
        let taken = |candidate: &str| seen.iter().any(|(n, m)| *n == ns && m == candidate);
        let unique = if taken(&name) {
            let base = format!("{name}-{}", p.source.kind.to_ascii_lowercase());
            let renamed = (1..)
                .map(|k| match k {
                    1 => shorten(&base),
                    k => shorten(&format!("{base}-{k}")),
                })
                .find(|candidate| !taken(candidate))
                .unwrap_or(base);
            p.findings.push(Finding {
                severity: Severity::Note,
                code: "renamed",
                field: "metadata.name".to_owned(),
                message: format!(
                    "another policy in this output is already named {name:?}: this one is {renamed:?}"
                ),
            });
            renamed
        } else {
            name
        };
        if unique != source_name {
            p.document.metadata.name = Some(unique.clone());
            rename_in_opt_in(&mut p.opt_in, &source_name, &unique);
        }
        seen.push((ns, unique));
    }
}

/// `name` cut to [`MAX_NAME_LEN`] characters when longer, ending in a hash of the whole name
/// so that two long names alike at the start stay apart. Names are ASCII (`check_names`).
fn shorten(name: &str) -> String {
    if name.len() <= MAX_NAME_LEN {
        return name.to_owned();
    }
    // FNV-1a: stable across runs and versions, unlike the standard library's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("-{:08x}", hash & 0xffff_ffff);
    let head = name
        .get(..MAX_NAME_LEN - suffix.len())
        .unwrap_or(name)
        .trim_end_matches(['-', '.']);
    format!("{head}{suffix}")
}

/// The opt-in of a renamed policy names it by its new name: following the old one would attach
/// the other source's policy, with its origins and credentials.
fn rename_in_opt_in(opt_in: &mut OptIn, old: &str, new: &str) {
    // `corsair.dev/policy=NAME` (kubectl) or `corsair.dev/policy: NAME` (a manifest), NAME whole.
    let pattern = format!(
        r"(corsair\.dev/policy(?:=|: )){}($|[^a-z0-9.-])",
        regex::escape(old)
    );
    let Ok(re) = regex::Regex::new(&pattern) else {
        return;
    };
    let replace = |text: &mut String| {
        *text = re
            .replace_all(text, format!("${{1}}{new}${{2}}"))
            .into_owned();
    };
    match opt_in {
        OptIn::Command(command) => replace(command),
        OptIn::Note(lines) => lines.iter_mut().for_each(replace),
    }
}

/// An empty spec, for sources whose rules all live in routes.
pub(crate) fn empty_spec() -> CorsPolicySpec {
    CorsPolicySpec::default()
}

#[cfg(test)]
mod tests;
