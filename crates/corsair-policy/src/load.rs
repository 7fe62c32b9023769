//! Loading a policy file: a `CorsPolicy` manifest in YAML, or the JSON the controller renders.

use crate::model::PolicyDocument;

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
pub fn load_document(text: &str) -> Result<PolicyDocument, LoadError> {
    let _ = text;
    todo!("engine issue")
}
