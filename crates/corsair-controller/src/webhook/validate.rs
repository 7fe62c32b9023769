//! The validating webhook's logic: a CorsPolicy object in, the engine's findings out.

use corsair_policy::check_spec;
use serde_json::Value;

use crate::crd::CorsPolicy;
use crate::document::{MAX_CONFIGMAP_DATA, render, too_large};
use crate::names;

/// The verdict on one CorsPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyValidation {
    pub outcome: ValidationOutcome,
    /// Every error, each naming the field path; empty when the policy is accepted.
    pub errors: Vec<String>,
    /// Lint warnings, shown by kubectl.
    pub warnings: Vec<String>,
}

/// The `result` label of the validation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValidationOutcome {
    Accepted,
    /// Accepted, with lint warnings.
    Warned,
    /// Refused: the spec has errors.
    Denied,
}

impl ValidationOutcome {
    pub fn metric_label(self) -> &'static str {
        match self {
            ValidationOutcome::Accepted => "accepted",
            ValidationOutcome::Warned => "accepted_with_warnings",
            ValidationOutcome::Denied => "denied",
        }
    }
}

impl PolicyValidation {
    /// All errors in one message for the AdmissionResponse.
    pub fn message(&self) -> String {
        self.errors.join("; ")
    }

    fn denied(errors: Vec<String>) -> Self {
        Self {
            outcome: ValidationOutcome::Denied,
            errors,
            warnings: Vec::new(),
        }
    }
}

/// Validates a whole CorsPolicy object (`apiVersion`, `metadata`, `spec`) as the API server
/// sends it. Field paths in the messages start at the object (`spec.allowOrigins[2]`).
pub fn validate_policy(object: &Value) -> PolicyValidation {
    let mut errors = Vec::new();
    let name = object.pointer("/metadata/name").and_then(Value::as_str);
    let max = names::MAX_POLICY_NAME_LEN;
    if let Some(name) = name.filter(|n| n.len() > max) {
        errors.push(format!(
            "metadata.name: {name:?} is longer than {max} characters, the longest value of the label that marks its ConfigMap"
        ));
    }
    let Some(spec) = object.get("spec") else {
        errors.push("spec: required field is missing".to_owned());
        return PolicyValidation::denied(errors);
    };
    // The same field-by-field check as `corsair check`: every problem in one answer, unknown
    // fields with a did-you-mean.
    let (typed, report) = check_spec(spec);
    errors.extend(report.errors().map(ToString::to_string));
    if let (Some(spec), true) = (typed, errors.is_empty()) {
        // What the controller will render for the proxies must fit in a ConfigMap. Counted
        // with the longest generation, so whatever is admitted here fits there.
        let mut policy = CorsPolicy::new(name.unwrap_or_default(), spec);
        policy.metadata.namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        policy.metadata.generation = Some(i64::MAX);
        if let Ok(rendered) = render(&policy)
            && rendered.len() > MAX_CONFIGMAP_DATA
        {
            errors.push(format!("spec: {}", too_large(rendered.len())));
        }
    }
    let warnings: Vec<String> = report.warnings().map(ToString::to_string).collect();
    let outcome = if !errors.is_empty() {
        ValidationOutcome::Denied
    } else if warnings.is_empty() {
        ValidationOutcome::Accepted
    } else {
        ValidationOutcome::Warned
    };
    PolicyValidation {
        outcome,
        errors,
        warnings,
    }
}

#[cfg(all(test, feature = "runtime"))]
mod size_limit {
    use serde_json::json;

    use super::validate_policy;
    use crate::fixtures::large_spec;

    /// What the controller could not deliver in a ConfigMap is refused at `kubectl apply`;
    /// a policy just under the limit is not.
    #[test]
    fn a_policy_too_large_for_a_configmap_is_refused_with_its_size() {
        let object = |spec| json!({"metadata": {"name": "api", "namespace": "shop"}, "spec": spec});
        let refused = validate_policy(&object(large_spec(150)));
        assert!(
            refused.message().starts_with("spec: ") && refused.message().contains("1048576"),
            "{}",
            refused.message()
        );
        let fits = validate_policy(&object(large_spec(120)));
        assert!(fits.errors.is_empty(), "{}", fits.message());
    }
}

#[cfg(test)]
mod name_limit {
    use kube::CustomResourceExt;
    use serde_json::json;

    use super::validate_policy;
    use crate::crd::CorsPolicy;
    use crate::names::is_policy_name;
    use crate::names::{MAX_POLICY_NAME_LEN, policy_configmap_name};

    /// The CRD, both webhooks and the ConfigMap agree on one longest policy name.
    #[test]
    fn one_name_limit_everywhere() {
        let max = MAX_POLICY_NAME_LEN;
        // The name is the value of the ConfigMap's policy label: at most 63 characters.
        assert!(max <= 63);
        assert!(policy_configmap_name(&"a".repeat(max)).len() <= 253);
        let crd = serde_json::to_string(&CorsPolicy::crd()).unwrap_or_default();
        assert!(
            crd.contains(&format!("self.metadata.name.size() <= {max}")),
            "the CRD's CEL rule holds the same limit"
        );
        let policy = |name: String| json!({"metadata": {"name": name}, "spec": {"allowOrigins": ["https://a.example.com"]}});
        assert!(validate_policy(&policy("a".repeat(max))).errors.is_empty());
        let refused = validate_policy(&policy("a".repeat(max + 1)));
        assert!(
            refused
                .message()
                .contains(&format!("longer than {max} characters")),
            "{}",
            refused.message()
        );
        assert!(is_policy_name(&"a".repeat(max)));
        assert!(!is_policy_name(&"a".repeat(max + 1)));
    }
}
