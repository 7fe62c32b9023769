//! Loading a policy file: a `CorsPolicy` manifest in YAML, or the JSON the controller renders.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::{API_VERSION, KIND, PolicyDocument};

/// Why a policy document could not be read. Validation of the spec is separate ([`crate::validate`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not YAML/JSON, or a field has the wrong type or is unknown; the message names the field.
    #[error("{0}")]
    Syntax(String),
    #[error("apiVersion is {0:?}, expected \"corsair.dev/v1alpha1\"")]
    ApiVersion(String),
    #[error("kind is {0:?}, expected \"CorsPolicy\"")]
    Kind(String),
}

/// Parses a whole `CorsPolicy` manifest (YAML or JSON).
///
/// Text that starts with `{` is read as JSON, for JSON's own error messages; anything else as
/// YAML. `apiVersion` and `kind` are checked before the spec, so a manifest of another kind gets
/// that error rather than a list of unknown fields.
pub fn load_document(text: &str) -> Result<PolicyDocument, LoadError> {
    let json = text.trim_start().starts_with('{');
    if let Ok(head) = parse::<TypeMeta>(text, json) {
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
    parse::<PolicyDocument>(text, json)
}

/// Just `apiVersion` and `kind`; every other field is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

fn parse<T: DeserializeOwned>(text: &str, json: bool) -> Result<T, LoadError> {
    if json {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| syntax(e.path(), e.inner().to_string()))
            .and_then(|value| {
                de.end().map_err(|e| LoadError::Syntax(e.to_string()))?;
                Ok(value)
            })
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| syntax(e.path(), e.inner().to_string()))
    }
}

/// `spec.routes[0].allowOrigin: unknown field ...`; no path prefix for errors at the root.
fn syntax(path: &serde_path_to_error::Path, message: String) -> LoadError {
    let path = path.to_string();
    if path == "." || path.is_empty() {
        LoadError::Syntax(message)
    } else {
        LoadError::Syntax(format!("{path}: {message}"))
    }
}
