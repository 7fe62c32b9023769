//! The document the proxies load, as the controller writes it into a CorsPolicy's ConfigMap and
//! the validating webhook sizes it before it is stored.

use corsair_policy::PolicyDocument;
use corsair_policy::model::{API_VERSION, DocumentMeta, KIND};

use crate::crd::CorsPolicy;

/// The most a ConfigMap's data may hold: the API server refuses a ConfigMap whose values add
/// up to more.
pub const MAX_CONFIGMAP_DATA: usize = 1 << 20;

/// Why a policy rendered into `size` bytes cannot be delivered, and what to do about it.
pub fn too_large(size: usize) -> String {
    format!(
        "rendered for the proxies it takes {size} bytes, more than the {MAX_CONFIGMAP_DATA} a \
         ConfigMap can hold; split it into several CorsPolicies (one per group of workloads) or \
         shorten its lists"
    )
}

/// The document the proxy loads: the whole manifest, with the generation it was rendered from.
/// Indented for whoever reads the ConfigMap, unless that would not fit in one.
pub fn render(policy: &CorsPolicy) -> serde_json::Result<String> {
    let document = PolicyDocument {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: DocumentMeta {
            name: policy.metadata.name.clone(),
            namespace: policy.metadata.namespace.clone(),
            generation: policy.metadata.generation,
        },
        spec: policy.spec.clone(),
    };
    let pretty = serde_json::to_string_pretty(&document)?;
    if pretty.len() <= MAX_CONFIGMAP_DATA {
        return Ok(pretty);
    }
    serde_json::to_string(&document)
}
