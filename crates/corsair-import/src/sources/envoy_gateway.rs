//! Envoy Gateway: `SecurityPolicy` `spec.cors`, enforced by Envoy's CORS filter.
//!
//! What Envoy Gateway does: `*` becomes a regex `.*`, which Envoy treats as "every origin" and
//! answers by echoing the request's origin, so with `allowCredentials: true` every site could
//! read credentialed responses; other wildcards become regexes where `*` matches any characters;
//! plain origins are compared byte for byte; `allowHeaders: ["*"]` echoes the requested headers
//! (`Authorization` included), while a `*` beside other items goes out as text in the joined
//! list; `maxAge` is a duration.

use serde_json::Value;

use super::gateway::wildcard_origin;
use super::{Outcome, Type, at, ns_flag, single, strings};
use crate::rules::{self, Ctx, Draft, Fields};
use crate::{OptIn, SourceRef};

pub(crate) fn convert(doc: &Value, source: &SourceRef) -> Outcome {
    let cors = at(doc, &["spec", "cors"]);
    if cors.is_null() {
        return Outcome::NotASource;
    }
    let mut ctx = Ctx::default();
    let base = "spec.cors";
    super::check_allow_style(cors, base, Type::Texts, Type::Text, &mut ctx);
    let fields = Fields::allow_style(base);
    let mut d = Draft {
        credentials: at(cors, &["allowCredentials"]).as_bool() == Some(true),
        star_headers_echoed: true,
        fields: fields.clone(),
        ..Draft::default()
    };
    for (k, entry) in strings(at(cors, &["allowOrigins"])).iter().enumerate() {
        wildcard_origin(
            entry,
            &format!("{}[{k}]", fields.origins),
            false,
            &mut d,
            &mut ctx,
        );
    }
    super::envoy_lists(cors, &mut d, &mut ctx);
    // Envoy Gateway joins each list with ", "; Envoy echoes the request only for a list that
    // is exactly `*`, so `["GET", "*"]` reached browsers as the text `GET, *`.
    rules::literal_stars(
        &mut d,
        &mut ctx,
        "Envoy Gateway",
        rules::StarLists::EchoLoneStar,
    );
    let spec = rules::lower(d, &mut ctx).map(rules::top_level);
    single(source, spec, ctx, opt_in(doc, source))
}

/// The policy's targets are routes or Gateways: the workloads are their backends.
fn opt_in(doc: &Value, source: &SourceRef) -> OptIn {
    let ns = ns_flag(source);
    let mut targets: Vec<(String, String)> = Vec::new();
    let single_ref = at(doc, &["spec", "targetRef"]);
    let refs = at(doc, &["spec", "targetRefs"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    for r in refs
        .iter()
        .chain(std::iter::once(single_ref))
        .filter(|r| !r.is_null())
    {
        let kind = at(r, &["kind"]).as_str().unwrap_or("HTTPRoute").to_owned();
        let name = at(r, &["name"]).as_str().unwrap_or_default().to_owned();
        targets.push((kind, name));
    }
    let mut lines = vec![format!(
        "{source} applies to {}; the workloads are the backends of those routes:",
        if targets.is_empty() {
            "the routes its targetSelectors select".to_owned()
        } else {
            targets
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )];
    for (kind, name) in &targets {
        if kind == "HTTPRoute" || kind == "GRPCRoute" {
            lines.push(format!(
                "  kubectl get {} {name}{ns} -o jsonpath='{{.spec.rules[*].backendRefs[*].name}}'",
                kind.to_ascii_lowercase()
            ));
        }
    }
    lines.push(
        "then, for each backend Service, the workloads whose pods carry its selector labels:"
            .to_owned(),
    );
    lines.push(format!(
        "  kubectl annotate deployment NAME{ns} corsair.dev/policy={}",
        source.name
    ));
    OptIn::Note(lines)
}
