//! Gateway API: `HTTPRoute` rules with a `CORS` filter (`HTTPCORSFilter`, GEP-1767).
//!
//! What the filter does (its API documentation): `*` alone allows every origin and, with
//! `allowCredentials: true`, the gateway answers with the request's origin, i.e. every site may
//! read credentialed responses; `*` in a host is a greedy match to the left over any number of
//! labels; with credentials, `*` in `allowMethods`/`allowHeaders` echoes what was requested
//! (`Authorization` included), and without credentials the gateway may send `*` or echo: Envoy
//! Gateway and Istio echo (Envoy's CORS filter does, whatever the credentials), so `Authorization`
//! passed there too; safelisted methods are always allowed; `maxAge` defaults to 5 seconds, what
//! browsers assume without the header. Each rule's path match becomes a route.
//! A CORS filter on one of a rule's `backendRefs` acts only on the requests sent to that backend,
//! so the policy is then meant for that Service's workloads alone.

use serde_json::Value;

use super::{Outcome, PathEntry, Type, at, push_unique, strings};
use crate::rules::{self, Ctx, Draft, Fields};
use crate::{Severity, SourceRef};

pub(crate) fn convert(doc: &Value, source: &SourceRef) -> Outcome {
    let mut ctx = Ctx::default();
    let mut entries = Vec::new();
    let mut services = Vec::new();
    let mut any_cors = false;
    let rules_list = at(doc, &["spec", "rules"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, rule) in rules_list.iter().enumerate() {
        let filters = at(rule, &["filters"])
            .as_array()
            .cloned()
            .unwrap_or_default();
        let backends = at(rule, &["backendRefs"])
            .as_array()
            .cloned()
            .unwrap_or_default();
        let service = |b: &Value| {
            (at(b, &["kind"]).as_str().unwrap_or("Service") == "Service")
                .then(|| at(b, &["name"]).as_str().unwrap_or_default().to_owned())
        };
        let rule_cors =
            cors_filter(&filters).map(|(k, c)| (format!("spec.rules[{i}].filters[{k}].cors"), c));
        // A CORS filter on a backendRef acts only on requests sent to that backend.
        let backend_cors: Vec<(String, Value, Option<String>)> = backends
            .iter()
            .enumerate()
            .filter_map(|(b, r)| {
                let (k, c) = cors_filter(at(r, &["filters"]).as_array()?)?;
                Some((
                    format!("spec.rules[{i}].backendRefs[{b}].filters[{k}].cors"),
                    c,
                    service(r),
                ))
            })
            .collect();
        let mut level = None;
        let cors = match (rule_cors, backend_cors.first()) {
            (Some((field, cors)), _) => {
                for (f, ..) in &backend_cors {
                    ctx.warn(
                        "backend-filter-not-converted",
                        f,
                        "the rule has a CORS filter of its own, and which of the two answers is up to the gateway: the rule's filter is converted, this one is not".to_owned(),
                    );
                }
                for b in &backends {
                    if let Some(name) = service(b) {
                        push_unique(&mut services, name);
                    }
                }
                Some((field, cors))
            }
            (None, Some((field, cors, _))) => {
                for (f, other, name) in &backend_cors {
                    if other != cors {
                        ctx.warn(
                            "backend-filter-not-converted",
                            f,
                            format!("differs from the CORS filter at {field}, and one policy holds one set of rules per path: not converted"),
                        );
                        continue;
                    }
                    let Some(name) = name else { continue };
                    ctx.warn(
                        "backend-filter",
                        f,
                        format!("applies only to requests the rule sends to Service {name}: attach the policy to that Service's workloads only; the rule's other backends answered without CORS headers and still do"),
                    );
                    push_unique(&mut services, name.clone());
                }
                Some((field.clone(), cors.clone()))
            }
            (None, None) => None,
        };
        if let Some((base, cors)) = cors {
            any_cors = true;
            if filters
                .iter()
                .any(|f| at(f, &["type"]).as_str() == Some("URLRewrite"))
            {
                ctx.warn(
                    "path-rewritten",
                    &format!("spec.rules[{i}].filters"),
                    "this rule rewrites the path before the backend sees it, and Corsair matches routes on the path the backend receives: check the route's pathPrefix against the rewritten path".to_owned(),
                );
            }
            level = rules::lower(draft(&cors, &base, &mut ctx), &mut ctx);
            if level.is_none() {
                ctx.findings.push(super::rule_allows_no_origin(&base));
            }
        }
        let matches = at(rule, &["matches"])
            .as_array()
            .cloned()
            .unwrap_or_default();
        if matches.is_empty() {
            entries.push(PathEntry {
                prefix: "/".to_owned(),
                exact: false,
                field: format!("spec.rules[{i}]"),
                rules: level.clone(),
                conditions: Vec::new(),
            });
        }
        for (j, m) in matches.iter().enumerate() {
            let f = format!("spec.rules[{i}].matches[{j}]");
            let others: Vec<&str> = ["headers", "queryParams", "method"]
                .into_iter()
                .filter(|k| super::is_condition(at(m, &[k])))
                .collect();
            let kind = at(m, &["path", "type"]).as_str().unwrap_or("PathPrefix");
            let value = at(m, &["path", "value"]).as_str().unwrap_or("/").to_owned();
            let f = format!("{f}.path");
            match kind {
                "PathPrefix" => {}
                "Exact" if level.is_some() => ctx.warn(
                    "exact-path-as-prefix",
                    &f,
                    format!("Exact {value:?} becomes pathPrefix {value:?}: requests to paths under {value}/ that reach the same backend get these CORS rules too"),
                ),
                "Exact" => {}
                _ => {
                    let message = if level.is_some() {
                        format!("{kind} {value:?} cannot be written as a path prefix: this match is not converted, so requests it matched get no CORS headers")
                    } else {
                        format!("{kind} {value:?} cannot be written as a path prefix: on a gateway that ranks this match first, the paths it took, without CORS, now get the CORS rules of the other rules, MORE open than the source. Add a route with mode: Disabled for each path it matched")
                    };
                    ctx.warn("path-not-converted", &f, message);
                    continue;
                }
            }
            entries.push(PathEntry {
                prefix: value,
                exact: kind == "Exact",
                field: f,
                rules: level.clone(),
                conditions: others.iter().map(|k| (*k).to_owned()).collect(),
            });
        }
    }
    if !any_cors {
        return Outcome::NotASource;
    }
    super::routed_policy(source, entries, false, ctx, &services)
}

/// The first `CORS` filter of a list, with its index.
fn cors_filter(filters: &[Value]) -> Option<(usize, Value)> {
    filters
        .iter()
        .enumerate()
        .find(|(_, f)| at(f, &["type"]).as_str() == Some("CORS"))
        .map(|(k, f)| (k, at(f, &["cors"]).clone()))
}

fn draft(cors: &Value, base: &str, ctx: &mut Ctx) -> Draft {
    super::check_allow_style(cors, base, Type::Texts, Type::Integer, ctx);
    let fields = Fields::allow_style(base);
    let credentials = at(cors, &["allowCredentials"]).as_bool() == Some(true);
    let mut d = Draft {
        credentials,
        // Envoy-based gateways echo the requested headers for `*`, with or without credentials.
        star_headers_echoed: true,
        fields: fields.clone(),
        ..Draft::default()
    };
    for entry in strings(at(cors, &["allowOrigins"])) {
        wildcard_origin(&entry, &fields.origins, true, &mut d, ctx);
    }
    let methods = strings(at(cors, &["allowMethods"]));
    d.methods = (!methods.is_empty()).then_some(methods);
    let headers = strings(at(cors, &["allowHeaders"]));
    if !credentials
        && headers.iter().any(|h| h == "*")
        && !headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("authorization"))
    {
        ctx.note(
            "wildcard-headers-echo-assumed",
            &fields.headers,
            "without credentials the Gateway API lets a gateway answer \"*\" either literally or by echoing the requested headers; Envoy-based gateways (Envoy Gateway, Istio) echo, so Authorization passed there and the policy lists it. On a gateway that sent \"*\" literally, browsers refused Authorization: remove it from allowHeaders to keep that".to_owned(),
        );
    }
    d.headers = (!headers.is_empty()).then_some(headers);
    d.expose = Some(strings(at(cors, &["exposeHeaders"])));
    d.max_age = match at(cors, &["maxAge"]).as_u64() {
        // 5 is the default and what browsers assume without the header.
        None | Some(5) => None,
        Some(n) => Some(n),
    };
    d
}

/// An origin where `*` in the host matches any characters (Gateway API, Envoy Gateway).
/// `default_port_matches`: whether `https://host:443` also matched `https://host`.
pub(crate) fn wildcard_origin(
    entry: &str,
    field: &str,
    default_port_matches: bool,
    d: &mut Draft,
    ctx: &mut Ctx,
) {
    let entry = entry.trim();
    if entry == "*" {
        d.any_origin = Some(field.to_owned());
        return;
    }
    if entry == "null" {
        d.null_origin = true;
        return;
    }
    let mut origin = entry.to_owned();
    if default_port_matches {
        for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
            if origin.starts_with(scheme) && origin.ends_with(port) {
                origin.truncate(origin.len() - port.len());
                ctx.warn(
                    "default-port-dropped",
                    field,
                    format!(
                        "{entry:?} written as {origin:?}: browsers never send the default port, and the Gateway API says it is assumed. Envoy-based gateways (Envoy Gateway, Istio) compare origins byte for byte, so there this entry never matched and the policy allows {origin:?} where the gateway did not: remove it if that origin should stay refused"
                    ),
                );
            }
        }
    }
    if origin.contains('*') {
        if rules::origin_problem(&origin).is_none() {
            d.origins.push(origin);
            return;
        }
        // `*` elsewhere (`https://*`, `https://app-*.example.com`): the same match as a regex.
        let re = origin
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*");
        ctx.note(
            "wildcard-as-regex",
            field,
            format!("{entry:?} has a `*` that Corsair's allowOrigins cannot express; it becomes the regex {re:?}, which matches the same origins"),
        );
        d.regexes.push(re);
        return;
    }
    match rules::origin_problem(&origin) {
        Some(problem) => ctx.push(
            Severity::Note,
            "origin-never-matched",
            field,
            format!("{entry:?} could never match an origin a browser sends ({problem}): left out"),
        ),
        None => d.origins.push(origin),
    }
}
