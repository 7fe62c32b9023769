//! Checking a manifest as generic JSON, reporting every problem at once.
//!
//! [`crate::load_document`] stops at the first field it cannot read, which is right for a proxy
//! loading a policy but makes a user fix one mistake per run. Here each field is read on its own:
//! an unknown or mistyped field becomes a finding (with a did-you-mean for a misspelt name), the
//! field is left out, and the rest of the spec is still validated. `corsair check` and the
//! validating webhook both use this, so they report the same findings with the same codes.

use schemars::JsonSchema;
use serde_json::{Map, Value};

use crate::model::{
    API_VERSION, CorsPolicySpec, KIND, MAX_LIST_ITEMS, MAX_NAME_LEN, MAX_ROUTES, MAX_STRING_LEN,
    RouteSpec, is_policy_name,
};
use crate::validate::{Finding, Report, Severity, validate};

/// What [`check_manifest`] made of one document.
#[derive(Debug)]
pub enum Checked {
    /// Not a `CorsPolicy` (another kind, or no kind at all): nothing was checked.
    Skipped {
        kind: Option<String>,
        api_version: Option<String>,
    },
    /// A `CorsPolicy`: every finding, and the spec when it could be read (possibly without the
    /// fields that were refused).
    Policy {
        name: Option<String>,
        spec: Option<CorsPolicySpec>,
        report: Report,
    },
}

/// Checks one manifest: a `CorsPolicy` is checked field by field; anything else is skipped.
pub fn check_manifest(doc: &Value) -> Checked {
    let kind = doc.get("kind").and_then(Value::as_str);
    let api_version = doc.get("apiVersion").and_then(Value::as_str);
    if kind != Some(KIND) {
        return Checked::Skipped {
            kind: kind.map(str::to_owned),
            api_version: api_version.map(str::to_owned),
        };
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut report = Report::default();
    if let Some(name) = name.as_deref().filter(|n| !is_policy_name(n)) {
        report.findings.push(error(
            "metadata.name",
            "invalid-name",
            format!(
                "{name:?} is not a CorsPolicy name: a lowercase DNS subdomain (labels of lowercase letters, digits and '-', each starting and ending with a letter or digit, joined by '.') of at most {MAX_NAME_LEN} characters, since the name is also a label value of the policy's ConfigMap"
            ),
        ));
    }
    if api_version != Some(API_VERSION) {
        let shown = api_version.map_or_else(|| "missing".to_owned(), |v| format!("{v:?}"));
        report.findings.push(Finding {
            severity: Severity::Error,
            path: "apiVersion".to_owned(),
            code: "invalid-api-version",
            message: format!("is {shown}, expected {API_VERSION:?}"),
        });
    }
    let (spec, spec_report) = match doc.get("spec") {
        Some(spec) => check_spec(spec),
        None => {
            let mut r = Report::default();
            r.findings.push(error(
                "spec",
                "missing-field",
                "a CorsPolicy needs a spec".to_owned(),
            ));
            (None, r)
        }
    };
    report.findings.extend(spec_report.findings);
    Checked::Policy { name, spec, report }
}

/// Checks a `spec` given as JSON: unknown and mistyped fields, then every validation rule and
/// lint on what remains. Field paths start at `spec.`.
pub fn check_spec(spec: &Value) -> (Option<CorsPolicySpec>, Report) {
    let mut out = Vec::new();
    let Some(top) = spec.as_object() else {
        out.push(error(
            "spec",
            "invalid-type",
            format!("is {}, expected a mapping of fields", describe(spec)),
        ));
        return (None, Report { findings: out });
    };
    schema_bounds(spec, "spec", &mut out);
    let top_fields = field_names::<CorsPolicySpec>();
    let route_fields = field_names::<RouteSpec>();
    let mut dropped = Vec::new();
    let mut kept = Map::new();
    for (key, value) in top {
        let path = format!("spec.{key}");
        if key == "routes" {
            let routes = check_routes(value, &route_fields, &mut out, &mut dropped);
            kept.insert(key.clone(), Value::Array(routes));
            continue;
        }
        if !top_fields.iter().any(|f| f == key) {
            out.push(unknown_field(&path, key, &top_fields));
            continue;
        }
        match check_field::<CorsPolicySpec>(key, value, None) {
            Ok(()) => {
                kept.insert(key.clone(), value.clone());
            }
            Err(finding) => {
                out.push(finding.at(&path));
                dropped.push(path);
            }
        }
    }
    let spec: CorsPolicySpec = match serde_json::from_value(Value::Object(kept)) {
        Ok(spec) => spec,
        // Every field was read on its own above; this is a safety net, not an expected path.
        Err(e) => {
            out.push(error("spec", "invalid-type", e.to_string()));
            return (None, Report { findings: out });
        }
    };
    let origins_dropped = dropped
        .iter()
        .any(|p| p.ends_with(".allowOrigins") || p.ends_with(".allowOriginRegexes"));
    for finding in validate(&spec).findings {
        // A field already refused above is not reported again as missing or empty.
        let repeats = dropped.iter().any(|p| finding.path.starts_with(p.as_str()))
            || (finding.code == "no-origins" && origins_dropped);
        if !repeats {
            out.push(finding);
        }
    }
    (Some(spec), Report { findings: out })
}

fn check_routes(
    value: &Value,
    route_fields: &[String],
    out: &mut Vec<Finding>,
    dropped: &mut Vec<String>,
) -> Vec<Value> {
    let Some(routes) = value.as_array() else {
        out.push(error(
            "spec.routes",
            "invalid-type",
            format!("is {}, expected a list of routes", describe(value)),
        ));
        dropped.push("spec.routes".to_owned());
        return Vec::new();
    };
    let mut kept_routes = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let base = format!("spec.routes[{i}]");
        // A route that cannot be read keeps its place with a prefix no request has, so that the
        // indexes of the routes after it stay the user's; its own findings are left out.
        let placeholder = || {
            let mut object = Map::new();
            object.insert(
                "pathPrefix".to_owned(),
                Value::String(format!("/.corsair-unreadable-route-{i}")),
            );
            object
        };
        let Some(fields) = route.as_object() else {
            out.push(error(
                &base,
                "invalid-type",
                format!("is {}, expected a mapping of fields", describe(route)),
            ));
            dropped.push(base);
            kept_routes.push(Value::Object(placeholder()));
            continue;
        };
        let mut kept = Map::new();
        for (key, value) in fields {
            let path = format!("{base}.{key}");
            if !route_fields.iter().any(|f| f == key) {
                out.push(unknown_field(&path, key, route_fields));
                continue;
            }
            match check_field::<RouteSpec>(key, value, Some("/")) {
                Ok(()) => {
                    kept.insert(key.clone(), value.clone());
                }
                Err(finding) => {
                    out.push(finding.at(&path));
                    dropped.push(path);
                }
            }
        }
        if !kept.contains_key("pathPrefix") {
            let path = format!("{base}.pathPrefix");
            if !fields.contains_key("pathPrefix") {
                out.push(error(
                    &path,
                    "missing-field",
                    "every route needs a pathPrefix such as \"/api\"".to_owned(),
                ));
                dropped.push(path);
            }
            kept.extend(placeholder());
        }
        kept_routes.push(Value::Object(kept));
    }
    kept_routes
}

/// Reads `key: value` alone into `T`, so its type is checked exactly as loading would.
/// `path_prefix` fills the one required field of a route.
fn check_field<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &Value,
    path_prefix: Option<&str>,
) -> Result<(), PartialFinding> {
    let mut object = Map::new();
    if let Some(prefix) = path_prefix
        && key != "pathPrefix"
    {
        object.insert("pathPrefix".to_owned(), Value::String(prefix.to_owned()));
    }
    object.insert(key.to_owned(), value.clone());
    match serde_json::from_value::<T>(Value::Object(object)) {
        Ok(_) => Ok(()),
        Err(_) if key == "mode" && value.is_boolean() => Err(PartialFinding {
            code: "mode-is-boolean",
            message: format!(
                "is the boolean {value}, not a mode: YAML 1.1 (what kubectl reads) turns an unquoted Off, No or False into false; write `mode: Disabled` to pass requests through untouched (or Enforce, DryRun)"
            ),
        }),
        Err(_) if key == "mode" && value.as_str() == Some("Off") => Err(PartialFinding {
            code: "invalid-value",
            message: "\"Off\" is now called Disabled: write `mode: Disabled` (an unquoted Off is the boolean false to kubectl)".to_owned(),
        }),
        Err(e) => Err(PartialFinding {
            code: "invalid-type",
            message: format!("{value} is not valid here: {e}"),
        }),
    }
}

/// A finding whose path is known only to the caller.
struct PartialFinding {
    code: &'static str,
    message: String,
}

impl PartialFinding {
    fn at(self, path: &str) -> Finding {
        error(path, self.code, self.message)
    }
}

fn unknown_field(path: &str, key: &str, known: &[String]) -> Finding {
    let message = match did_you_mean(key, known) {
        Some(name) => format!("unknown field {key:?}: did you mean {name:?}?"),
        None => format!("unknown field {key:?}; the fields are {}", known.join(", ")),
    };
    error(path, "unknown-field", message)
}

/// What the CRD's schema refuses by size, which the API server checks before any webhook: lists
/// over [`MAX_LIST_ITEMS`] (routes over [`MAX_ROUTES`]) and strings over [`MAX_STRING_LEN`]
/// characters. `path` names `value`.
pub fn schema_bounds(value: &Value, path: &str, out: &mut Vec<Finding>) {
    match value {
        Value::Array(items) => {
            let max = if path == "spec.routes" {
                MAX_ROUTES
            } else {
                MAX_LIST_ITEMS
            };
            if items.len() > max {
                out.push(error(
                    path,
                    "too-many-items",
                    format!(
                        "has {} items; the CorsPolicy CRD allows at most {max}, so the API server refuses the policy",
                        items.len()
                    ),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                if item.is_string() || item.is_object() || item.is_array() {
                    schema_bounds(item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                schema_bounds(item, &format!("{path}.{key}"), out);
            }
        }
        Value::String(text) => {
            // Characters, as the schema's maxLength counts them; only a long text is counted.
            let length = if text.len() > MAX_STRING_LEN {
                text.chars().count()
            } else {
                text.len()
            };
            if length > MAX_STRING_LEN {
                out.push(error(
                    path,
                    "too-long",
                    format!(
                        "is {length} characters long; the CorsPolicy CRD allows at most {MAX_STRING_LEN}, so the API server refuses the policy"
                    ),
                ));
            }
        }
        _ => {}
    }
}

fn error(path: &str, code: &'static str, message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        path: path.to_owned(),
        code,
        message,
    }
}

/// A JSON value's type, as messages name it: `the string "x"`, `a list`, ….
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "empty".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

/// The serialized field names of `T`, from its JSON schema (the CRD's source too), so the list
/// cannot drift from the model.
fn field_names<T: JsonSchema>() -> Vec<String> {
    let schema = schemars::schema_for!(T);
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The known name closest to `key`, when it is close enough to be a typo: a different case, or
/// at most a third of the letters edited.
pub(crate) fn did_you_mean<'k>(key: &str, known: &'k [String]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|name| (edit_distance(&lower, &name.to_ascii_lowercase()), name))
        .filter(|(d, name)| *d <= 3 && *d * 3 <= name.len().max(key.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name.as_str())
}

/// Levenshtein distance over bytes (field names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row[j + 1] = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_typos_and_nothing_else() {
        let known = field_names::<CorsPolicySpec>();
        assert!(known.iter().any(|f| f == "allowMethods"), "{known:?}");
        assert_eq!(did_you_mean("allowMethod", &known), Some("allowMethods"));
        assert_eq!(did_you_mean("allowedOrigins", &known), Some("allowOrigins"));
        assert_eq!(did_you_mean("AllowHeaders", &known), Some("allowHeaders"));
        assert_eq!(did_you_mean("max_age", &known), Some("maxAge"));
        assert_eq!(did_you_mean("replicas", &known), None);
        assert_eq!(did_you_mean("x", &known), None);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
