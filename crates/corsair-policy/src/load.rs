//! Loading policy files: a `CorsPolicy` manifest in YAML, or the JSON the controller renders.
//!
//! YAML is read with `serde-saphyr`; its errors carry the line and column, which every message
//! here keeps (`line 4, column 11`), counted from the start of the file.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::{API_VERSION, KIND, PolicyDocument};

mod positions;

pub use positions::Positions;

/// Why a policy document could not be read. Validation of the spec is separate ([`crate::validate`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not YAML/JSON, or a field has the wrong type or is unknown; the message names the field
    /// and where it is (line and column).
    #[error("{0}")]
    Syntax(String),
    #[error("apiVersion is {0:?}, expected \"corsair.dev/v1alpha1\"")]
    ApiVersion(String),
    #[error("kind is {0:?}, expected \"CorsPolicy\"")]
    Kind(String),
}

/// Parses a whole `CorsPolicy` manifest (YAML or JSON), strictly: the first problem is the error.
///
/// Text that starts with `{` is read as JSON, for JSON's own error messages; anything else as
/// YAML. `apiVersion` and `kind` are checked before the spec, so a manifest of another kind gets
/// that error rather than a list of unknown fields.
pub fn load_document(text: &str) -> Result<PolicyDocument, LoadError> {
    let json = is_json(text);
    if let Ok(head) = parse::<TypeMeta>(text, json, 0) {
        if let Some(api_version) = head.api_version
            && api_version != API_VERSION
        {
            return Err(LoadError::ApiVersion(api_version));
        }
        if let Some(kind) = head.kind
            && kind != KIND
        {
            return Err(LoadError::Kind(kind));
        }
    }
    parse::<PolicyDocument>(text, json, 0)
}

/// One document of a file, as generic JSON, for tools that look at every document
/// (`corsair check`) rather than load one policy.
#[derive(Debug)]
pub struct Manifest {
    /// 1-based line of the file where the document starts.
    pub line: usize,
    /// The document, or why it could not be read (with its position in the file).
    pub value: Result<serde_json::Value, LoadError>,
    /// Where each field of the document is written (empty for JSON).
    pub positions: Positions,
}

/// Reads every document of a file: a YAML stream (documents separated by `---` lines) or one
/// JSON value. Empty documents are left out. A document that does not parse is an `Err` of its
/// own; the documents around it are still read.
///
/// YAML scalars are typed the way kubectl types them (YAML 1.1): an unquoted `Off`, `no` or
/// `yes` is a boolean, so a check sees what the API server would be sent.
pub fn parse_manifests(text: &str) -> Vec<Manifest> {
    if is_json(text) {
        return vec![Manifest {
            line: 1,
            value: parse::<serde_json::Value>(text, true, 0),
            positions: Positions::default(),
        }];
    }
    split_documents(text)
        .into_iter()
        .filter_map(|(offset, chunk)| {
            let node = parse_node(chunk, offset).transpose()?;
            let (value, positions) = match node {
                Ok(node) => {
                    let (value, positions) = node.into_parts(offset);
                    (Ok(value), positions)
                }
                Err(e) => (Err(e), Positions::default()),
            };
            Some(Manifest {
                line: offset + 1,
                value,
                positions,
            })
        })
        .collect()
}

fn is_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Splits a YAML stream at its `---` lines. A document marker always starts a line, and a
/// block scalar's text is always indented, so a `---` at the start of a line never belongs to
/// a value. Returns each document with the 0-based line it starts on; the marker stays in the
/// chunk so that a directive or tag after it is still parsed.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut start, mut start_line) = (0usize, 0usize);
    let mut pos = 0usize;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        // Directives (`%YAML 1.2`) and comments before a marker belong to the document it starts.
        let preamble = text[start..pos].lines().all(|l| {
            let l = l.trim_start();
            l.is_empty() || l.starts_with('%') || l.starts_with('#')
        });
        if marker && pos > start && !preamble {
            out.push((start_line, &text[start..pos]));
            start = pos;
            start_line = index;
        } else if marker && pos == start {
            start_line = index;
        }
        pos += line.len();
    }
    if start < text.len() || out.is_empty() {
        out.push((start_line, &text[start..]));
    }
    out
}

/// Just `apiVersion` and `kind`; every other field is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Parses `text` as JSON or YAML. `line_offset` is the number of lines of the file before
/// `text`, so that positions in messages are the file's.
fn parse<T: DeserializeOwned>(text: &str, json: bool, line_offset: usize) -> Result<T, LoadError> {
    if json {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| syntax(e.path(), e.inner().to_string()))
            .and_then(|value| {
                de.end().map_err(|e| LoadError::Syntax(e.to_string()))?;
                Ok(value)
            })
    } else {
        let mut options = serde_saphyr::Options::default();
        options.with_snippet = false;
        let mut path = None;
        let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = Some(e.path().clone());
                e.into_inner()
            })
        });
        result.map_err(|e| yaml_error(&e, path.as_ref(), line_offset))
    }
}

/// One YAML document as positioned nodes. Its errors carry their position only: the serde path
/// through a node tree (`value.?.value`) names no field.
fn parse_node(text: &str, line_offset: usize) -> Result<Option<positions::Node>, LoadError> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        Option::<positions::Node>::deserialize(de)
    })
    .map_err(|e| yaml_error(&e, None, line_offset))
}

/// `spec.routes[0].allowOrigin: unknown field ... at line 7, column 5`.
fn yaml_error(
    e: &serde_saphyr::Error,
    path: Option<&serde_path_to_error::Path>,
    line_offset: usize,
) -> LoadError {
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let message = match e.without_snippet() {
        // saphyr's own text ends in advice about its options, which a user cannot act on.
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("the key {key} is written twice in one mapping")
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => {
            "a key is written twice in one mapping".to_owned()
        }
        other => other.render_with_options(options),
    };
    // The rendered message ends with saphyr's own position; ours (offset to the file) replaces it.
    let message = match e.location() {
        Some(at) if at.line() > 0 => {
            let bare = strip_position(&message);
            let line = at.line() + line_offset as u64;
            format!("{bare} at line {line}, column {}", at.column())
        }
        _ => message,
    };
    match path {
        Some(path) => syntax(path, message),
        None => LoadError::Syntax(message),
    }
}

/// Removes a trailing ` at line L, column C` (or `line L column C`) that the YAML library
/// appended, so the position is not said twice.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => message[..i].trim_end(),
        None => message,
    }
}

/// `spec.routes[0].allowOrigin: unknown field ...`; no path prefix for errors at the root.
fn syntax(path: &serde_path_to_error::Path, mut message: String) -> LoadError {
    let path = path.to_string();
    if path == "mode" || path.ends_with(".mode") {
        for word in ["`Off`", "`false`", "boolean `false`", "boolean false"] {
            if message.contains(word) {
                message.push_str(
                    " (`Off` is now called `Disabled`; unquoted, YAML 1.1 and kubectl read Off as the boolean false): write `mode: Disabled`",
                );
                break;
            }
        }
    }
    if path == "." || path.is_empty() {
        LoadError::Syntax(message)
    } else {
        LoadError::Syntax(format!("{path}: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_documents_at_markers_only() {
        let text = "a: 1\n---\nb: |\n  ---\n  x\n--- \nc: 3\n";
        let docs = split_documents(text);
        let starts: Vec<usize> = docs.iter().map(|(line, _)| *line).collect();
        assert_eq!(starts, [0, 1, 5]);
        assert_eq!(docs[0].1, "a: 1\n");
        assert!(docs[1].1.contains("  ---\n"), "{:?}", docs[1].1);
        let leading = split_documents("---\na: 1\n");
        assert_eq!(leading, [(0, "---\na: 1\n")]);
    }
}
