//! Istio: `VirtualService` `spec.http[].corsPolicy`, enforced by Envoy's CORS filter.
//!
//! What Envoy does: an origin is allowed when a matcher matches it, or matches the string `*`
//! (so `exact: "*"`, `prefix: ""` or `regex: ".*"` allow every origin); the answer always echoes
//! the request's origin, so with `allowCredentials` every site could read credentialed responses;
//! `exact` and `prefix` compare bytes, `regex` must match the whole origin; `allowHeaders: ["*"]`
//! echoes the requested headers (`Authorization` included); preflights from other origins go on to
//! the backend unless `unmatchedPreflights: IGNORE`. The first `http` entry that matches a request
//! wins; each one's URI match becomes a route.

use corsair_policy::UnmatchedPreflights;
use serde_json::Value;

use super::{Outcome, PathEntry, Type, at, push_unique, strings};
use crate::SourceRef;
use crate::example;
use crate::rules::{self, Ctx, Draft, Fields};

pub(crate) fn convert(doc: &Value, source: &SourceRef) -> Outcome {
    let mut ctx = Ctx::default();
    let mut entries = Vec::new();
    let mut services = Vec::new();
    let mut any_cors = false;
    let http = at(doc, &["spec", "http"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, route) in http.iter().enumerate() {
        let cors = at(route, &["corsPolicy"]);
        let mut level = None;
        if !cors.is_null() {
            any_cors = true;
            for dest in at(route, &["route"]).as_array().into_iter().flatten() {
                let host = at(dest, &["destination", "host"])
                    .as_str()
                    .unwrap_or_default();
                push_unique(
                    &mut services,
                    host.split('.').next().unwrap_or_default().to_owned(),
                );
            }
            let base = format!("spec.http[{i}].corsPolicy");
            level = rules::lower(draft(cors, &base, &mut ctx), &mut ctx);
            if level.is_none() {
                ctx.findings.push(super::rule_allows_no_origin(&base));
            } else if !at(route, &["rewrite", "uri"]).is_null() {
                ctx.warn(
                    "path-rewritten",
                    &format!("spec.http[{i}].rewrite.uri"),
                    "this route rewrites the path before the backend sees it, and Corsair matches routes on the path the backend receives: check the route's pathPrefix against the rewritten path".to_owned(),
                );
            }
        }
        let matches = at(route, &["match"])
            .as_array()
            .cloned()
            .unwrap_or_default();
        if matches.is_empty() {
            entries.push(PathEntry {
                prefix: "/".to_owned(),
                exact: false,
                field: format!("spec.http[{i}]"),
                rules: level.clone(),
                conditions: Vec::new(),
            });
        }
        for (j, m) in matches.iter().enumerate() {
            let f = format!("spec.http[{i}].match[{j}]");
            let others: Vec<&str> = m
                .as_object()
                .map(|o| {
                    o.iter()
                        // The path itself, and what is no condition at all.
                        .filter(|(k, v)| {
                            !["uri", "name", "ignoreUriCase", "statPrefix"].contains(&k.as_str())
                                && super::is_condition(v)
                        })
                        .map(|(k, _)| k.as_str())
                        .collect()
                })
                .unwrap_or_default();
            if level.is_none() && at(m, &["ignoreUriCase"]).as_bool() == Some(true) {
                ctx.warn(
                    "case-ignored",
                    &format!("{f}.ignoreUriCase"),
                    "Istio sent this path here, without CORS, in any case (/ADMIN as /admin), and took it from the routes after it; Corsair matches paths case-sensitively, so the path in another case gets the CORS rules of the routes after it, MORE open than the source. Add a route with mode: Disabled for each spelling the application serves".to_owned(),
                );
            }
            let uri = at(m, &["uri"]);
            let exact = at(uri, &["prefix"]).is_null() && at(uri, &["exact"]).is_string();
            let (prefix, f) = if let Some(p) = at(uri, &["prefix"]).as_str() {
                (p.to_owned(), format!("{f}.uri.prefix"))
            } else if let Some(p) = at(uri, &["exact"]).as_str() {
                if level.is_some() {
                    ctx.warn(
                        "exact-path-as-prefix",
                        &format!("{f}.uri.exact"),
                        format!("exact {p:?} becomes pathPrefix {p:?}: requests to paths under {p}/ that reach the same backend get these CORS rules too"),
                    );
                }
                (p.to_owned(), format!("{f}.uri.exact"))
            } else if uri.is_null() {
                ("/".to_owned(), f)
            } else {
                let message = if level.is_some() {
                    "a regex URI match cannot be written as a path prefix: this match is not converted, so requests it matched get no CORS headers"
                } else {
                    "a regex URI match cannot be written as a path prefix: the paths it sent here, without CORS, get the CORS rules of the routes after it, MORE open than the source. Add a route with mode: Disabled for each path it matched"
                };
                ctx.warn(
                    "path-not-converted",
                    &format!("{f}.uri"),
                    message.to_owned(),
                );
                continue;
            };
            // Istio's prefix is a plain string prefix; Corsair's matches whole segments.
            if !exact && !prefix.ends_with('/') && level.is_some() {
                ctx.note(
                    "segment-prefix",
                    &f,
                    format!("Istio matched {prefix:?} as a string prefix ({prefix}x too); Corsair matches whole path segments ({prefix} and {prefix}/…)"),
                );
            }
            entries.push(PathEntry {
                prefix,
                exact,
                field: f,
                rules: level.clone(),
                conditions: others.iter().map(|k| (*k).to_owned()).collect(),
            });
        }
    }
    if !any_cors {
        return Outcome::NotASource;
    }
    super::routed_policy(source, entries, true, ctx, &services)
}

fn draft(cors: &Value, base: &str, ctx: &mut Ctx) -> Draft {
    super::check_allow_style(cors, base, Type::Matches, Type::Text, ctx);
    super::check_types(
        cors,
        base,
        &[
            ("allowOrigin", Type::Texts),
            ("unmatchedPreflights", Type::Text),
        ],
        ctx,
    );
    let fields = Fields::allow_style(base);
    let mut d = Draft {
        credentials: at(cors, &["allowCredentials"]).as_bool() == Some(true),
        star_headers_echoed: true,
        fields: fields.clone(),
        unmatched: Some(match at(cors, &["unmatchedPreflights"]).as_str() {
            Some("IGNORE") => UnmatchedPreflights::Reject,
            _ => UnmatchedPreflights::Forward,
        }),
        ..Draft::default()
    };
    let matchers = at(cors, &["allowOrigins"])
        .as_array()
        .filter(|list| !list.is_empty());
    // Istio reads the deprecated `allowOrigin` only when `allowOrigins` is absent.
    let deprecated = strings(at(cors, &["allowOrigin"]));
    if matchers.is_some() && !deprecated.is_empty() {
        ctx.warn(
            "deprecated-field-ignored",
            &format!("{base}.allowOrigin"),
            format!(
                "is ignored because {} is set, as Istio ignores it: its origins are not converted",
                fields.origins
            ),
        );
    }
    for (k, m) in matchers.into_iter().flatten().enumerate() {
        let f = format!("{}[{k}]", fields.origins);
        if let Some(exact) = at(m, &["exact"]).as_str() {
            exact_origin(exact, &f, &mut d, ctx);
        } else if let Some(prefix) = at(m, &["prefix"]).as_str() {
            prefix_origin(prefix, &f, &mut d, ctx);
        } else if let Some(re) = at(m, &["regex"]).as_str() {
            regex_origin(re, &f, &mut d, ctx);
        }
    }
    if matchers.is_none() {
        for (k, exact) in deprecated.iter().enumerate() {
            exact_origin(exact, &format!("{base}.allowOrigin[{k}]"), &mut d, ctx);
        }
    }
    super::envoy_lists(cors, &mut d, ctx);
    // Istio joins each list with commas; Envoy echoes the request only for a list that is
    // exactly `*`, so `["*", "GET"]` reached browsers as the text `*,GET`.
    rules::literal_stars(&mut d, ctx, "Istio", rules::StarLists::EchoLoneStar);
    d
}

/// A byte-exact match, as Envoy's `exact` (and ESPv2's `--cors_allow_origin`) compares.
pub(crate) fn exact_origin(entry: &str, field: &str, d: &mut Draft, ctx: &mut Ctx) {
    if entry == "*" {
        d.any_origin = Some(field.to_owned());
    } else if entry == "null" {
        // Sandboxed iframes and file: pages send `Origin: null`, which this entry equalled.
        d.null_origin = true;
    } else if let Some(problem) = rules::origin_problem(entry) {
        ctx.note(
            "origin-never-matched",
            field,
            format!("{entry:?} could never equal an origin a browser sends ({problem}): left out"),
        );
    } else {
        d.origins.push(entry.to_owned());
    }
}

fn prefix_origin(prefix: &str, field: &str, d: &mut Draft, ctx: &mut Ctx) {
    if prefix.is_empty() || "*".starts_with(prefix) {
        d.any_origin = Some(field.to_owned());
        return;
    }
    // Anchor: keep the origins the prefix was written for, i.e. complete the last host label
    // and allow any port, but never another host under or after it.
    let has_port = prefix
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains(':'));
    let complete = rules::origin_problem(prefix).is_none();
    let (kept, how) = if complete && has_port {
        (prefix.to_owned(), format!("the origin {prefix:?}"))
    } else if complete {
        let re = format!("{}(:[0-9]+)?", regex::escape(prefix));
        (
            re.clone(),
            format!("the regex {re:?} (that origin on any port)"),
        )
    } else if has_port {
        let re = format!("{}[0-9]*", regex::escape(prefix));
        (re.clone(), format!("the regex {re:?}"))
    } else {
        let re = format!("{}[a-z0-9-]*(:[0-9]+)?", regex::escape(prefix));
        (
            re.clone(),
            format!("the regex {re:?} (the rest of that host label, on any port)"),
        )
    };
    if complete && has_port {
        d.origins.push(kept.clone());
    } else {
        d.regexes.push(kept.clone());
    }
    let policy_allows = |o: &str| o == kept || rules::full_match(&kept, o);
    let shown = example::prefix_example(prefix, policy_allows)
        .map(|e| format!(", such as {e},"))
        .unwrap_or_default();
    ctx.warn(
        "origin-anchored",
        field,
        format!("prefix {prefix:?} also allowed every origin that merely starts with it{shown} which anyone can register; the policy anchors it to {how}"),
    );
}

fn regex_origin(re: &str, field: &str, d: &mut Draft, ctx: &mut Ctx) {
    if rules::full_match(re, "*") {
        d.any_origin = Some(field.to_owned());
        return;
    }
    match rules::regex_problem(re) {
        Some(problem) => ctx.warn(
            "regex-not-converted",
            field,
            format!("{re:?} is not valid in Corsair's regex syntax ({problem}): left out, so the origins it matched are no longer allowed"),
        ),
        None => d.regexes.push(re.to_owned()),
    }
}
