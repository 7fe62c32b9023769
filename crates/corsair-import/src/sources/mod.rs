//! One module per source; each turns one manifest into policy drafts with findings.

use corsair_policy::CorsPolicySpec;
use serde_json::Value;

use crate::rules::Ctx;
use crate::{Finding, OptIn, SourceRef};

mod envoy_gateway;
mod esp;
mod gateway;
mod istio;
mod nginx;
mod traefik;

#[cfg(test)]
pub(crate) use traefik::is_anchored as traefik_is_anchored;

/// A policy before it is wrapped into a manifest and checked.
pub(crate) struct PolicyDraft {
    pub name: String,
    pub spec: CorsPolicySpec,
    pub findings: Vec<Finding>,
    pub opt_in: OptIn,
    pub incomplete: bool,
}

pub(crate) enum Outcome {
    /// Not a kind this tool reads, or one without CORS configuration.
    NotASource,
    /// A source whose CORS configuration converts to nothing; the findings say why.
    Nothing(Vec<Finding>),
    Policies(Vec<PolicyDraft>),
}

pub(crate) fn convert(api_version: &str, doc: &Value, source: &SourceRef) -> Outcome {
    let group = api_version.split('/').next().unwrap_or_default();
    match (group, source.kind.as_str()) {
        ("networking.k8s.io" | "extensions", "Ingress") => nginx::convert(doc, source),
        ("gateway.networking.k8s.io", "HTTPRoute") => gateway::convert(doc, source),
        ("networking.istio.io", "VirtualService") => istio::convert(doc, source),
        ("gateway.envoyproxy.io", "SecurityPolicy") => envoy_gateway::convert(doc, source),
        ("traefik.io" | "traefik.containo.us", "Middleware") => {
            traefik::convert(doc, source, group == "traefik.containo.us")
        }
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet") | ("v1", "Pod") => {
            esp::convert(doc, source)
        }
        _ => Outcome::NotASource,
    }
}

/// A one-policy outcome, or `Nothing` with the findings when no origin was left.
pub(crate) fn single(
    source: &SourceRef,
    spec: Option<CorsPolicySpec>,
    ctx: Ctx,
    opt_in: OptIn,
) -> Outcome {
    let Some(spec) = spec else {
        let mut findings = ctx.findings;
        findings.push(no_origin_left());
        return Outcome::Nothing(findings);
    };
    Outcome::Policies(vec![PolicyDraft {
        name: source.name.clone(),
        spec,
        findings: ctx.findings,
        opt_in,
        incomplete: ctx.incomplete,
    }])
}

pub(crate) fn no_origin_left() -> Finding {
    Finding {
        severity: crate::Severity::Warning,
        code: "no-origin-left",
        field: "(origins)".to_owned(),
        message: "no origin a browser sends was ever allowed by this configuration: no policy is produced for it".to_owned(),
    }
}

/// A routing rule whose CORS configuration allows no origin a browser sends: browsers were
/// refused there, so its paths stay in the policy as paths without CORS, never left to a
/// broader route's rules.
pub(crate) fn rule_allows_no_origin(field: &str) -> Finding {
    Finding {
        severity: crate::Severity::Note,
        code: "rule-allows-no-origin",
        field: field.to_owned(),
        message: "allows no origin a browser sends, so browsers were refused on this rule's paths: they are kept as paths without CORS (a route with mode off where a broader route would cover them), and no broader route's origins reach them".to_owned(),
    }
}

/// `.a.b` of a JSON value, or `Null`.
pub(crate) fn at<'v>(value: &'v Value, path: &[&str]) -> &'v Value {
    let mut v = value;
    for key in path {
        v = v.get(key).unwrap_or(&Value::Null);
    }
    v
}

/// The JSON type of a field in its source's API (the schema of its CRD).
#[derive(Clone, Copy)]
pub(crate) enum Type {
    Bool,
    Integer,
    Text,
    Texts,
    /// A list of mappings (Istio's `StringMatch`).
    Matches,
}

/// Warns about each field of `object` (at `base`) whose value its source's API refuses: the
/// source never ran with such a manifest. A mistyped flag, number or list is read as left out,
/// so without a word a typo (`allowCredentials: "true"`) would vanish; a number where a string
/// belongs, or in a list of strings, is read as its text.
pub(crate) fn check_types(object: &Value, base: &str, fields: &[(&str, Type)], ctx: &mut Ctx) {
    const REFUSED: &str = "the API server refuses such a manifest, so the source never ran with it";
    for (key, kind) in fields {
        let value = at(object, &[key]);
        let fits = match kind {
            Type::Bool => value.is_boolean(),
            Type::Integer => value.is_i64() || value.is_u64(),
            Type::Text => value.is_string(),
            Type::Texts | Type::Matches => value.is_array(),
        };
        let field = format!("{base}.{key}");
        if !value.is_null() && !fits {
            let expected = match kind {
                Type::Bool => "true or false",
                Type::Integer => "a whole number",
                Type::Text => "a string",
                Type::Texts | Type::Matches => "a list",
            };
            let read = match kind {
                Type::Text if !value.is_array() && !value.is_object() => "",
                _ => "; the policy leaves it out",
            };
            ctx.warn(
                "invalid-type",
                &field,
                format!(
                    "is {}, expected {expected}: {REFUSED}{read}",
                    corsair_policy::describe(value)
                ),
            );
            continue;
        }
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            let (fits, expected) = match kind {
                Type::Matches => (
                    item.is_object(),
                    "a match such as {exact: \"https://app.example.com\"}",
                ),
                _ => (item.is_string(), "a string"),
            };
            if !fits {
                ctx.warn(
                    "invalid-type",
                    &format!("{field}[{i}]"),
                    format!(
                        "is {}, expected {expected}: {REFUSED}",
                        corsair_policy::describe(item)
                    ),
                );
            }
        }
    }
}

/// [`check_types`] for the CORS fields that the Gateway API, Envoy Gateway and Istio name alike
/// (`rules::Fields::allow_style`); only the types of their origins and `maxAge` differ.
pub(crate) fn check_allow_style(
    cors: &Value,
    base: &str,
    origins: Type,
    max_age: Type,
    ctx: &mut Ctx,
) {
    check_types(
        cors,
        base,
        &[
            ("allowOrigins", origins),
            ("allowMethods", Type::Texts),
            ("allowHeaders", Type::Texts),
            ("exposeHeaders", Type::Texts),
            ("allowCredentials", Type::Bool),
            ("maxAge", max_age),
        ],
        ctx,
    );
}

/// The method, header and exposed-header lists and the `maxAge` duration of an Envoy CORS policy,
/// as Istio and Envoy Gateway both spell them; an empty list is left to the defaults.
pub(crate) fn envoy_lists(cors: &Value, d: &mut crate::rules::Draft, ctx: &mut Ctx) {
    let list = |key: &str| Some(strings(at(cors, &[key]))).filter(|l| !l.is_empty());
    d.methods = list("allowMethods");
    d.headers = list("allowHeaders");
    d.expose = list("exposeHeaders");
    d.max_age = text(at(cors, &["maxAge"])).and_then(|v| {
        crate::rules::parse_duration(&v).or_else(|| {
            ctx.warn(
                "invalid-value",
                &d.fields.max_age,
                format!("{v:?} is not a duration: left out"),
            );
            None
        })
    });
}

/// A list of strings, or of anything else rendered as text (a YAML `true` is `"true"`).
pub(crate) fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(text).collect())
        .unwrap_or_default()
}

/// A scalar as text; `None` for null, arrays and objects.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `-n NS` for commands, empty without a namespace.
pub(crate) fn ns_flag(source: &SourceRef) -> String {
    source
        .namespace
        .as_ref()
        .map(|ns| format!(" -n {ns}"))
        .unwrap_or_default()
}

/// The note for sources that name Services: how to find the workloads behind them.
pub(crate) fn services_note(source: &SourceRef, policy: &str, services: &[String]) -> OptIn {
    let ns = ns_flag(source);
    let mut lines = Vec::new();
    if services.is_empty() {
        lines.push(format!(
            "{source} names no backend Service: annotate the workloads it sends traffic to:"
        ));
    } else {
        lines.push(format!(
            "{source} sends traffic to the Service(s) {}; find the workloads behind each with",
            services.join(", ")
        ));
        for s in services {
            lines.push(format!(
                "  kubectl get service {s}{ns} -o jsonpath='{{.spec.selector}}'"
            ));
        }
        lines.push("then annotate each Deployment, StatefulSet or DaemonSet whose pods carry those labels:".to_owned());
    }
    lines.push(format!(
        "  kubectl annotate deployment NAME{ns} corsair.dev/policy={policy}"
    ));
    OptIn::Note(lines)
}

/// Service names in `backendRefs` lists (Gateway API) or `destination.host` (Istio), in order, once each.
pub(crate) fn push_unique(list: &mut Vec<String>, item: String) {
    if !item.is_empty() && !list.contains(&item) {
        list.push(item);
    }
}

/// One path match of a routing rule, with the CORS rules it had (`None`: the rule had no CORS).
pub(crate) struct PathEntry {
    pub prefix: String,
    /// The source matched this one path only (Istio `exact`, Gateway API `Exact`).
    pub exact: bool,
    pub field: String,
    pub rules: Option<corsair_policy::RouteSpec>,
    /// What else the match requires (`headers`, `method`, …): it takes only some of the path's
    /// requests, and the others fall to the rules after it.
    pub conditions: Vec<String>,
}

fn under(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    let path = path.trim_end_matches('/');
    p.is_empty()
        || path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One policy with a route per path rule (Gateway API, Istio), or nothing when no rule leaves
/// an origin to allow.
pub(crate) fn routed_policy(
    source: &SourceRef,
    entries: Vec<PathEntry>,
    first_match_wins: bool,
    mut ctx: Ctx,
    services: &[String],
) -> Outcome {
    let routes = assemble_routes(entries, first_match_wins, &mut ctx);
    if !routes.iter().any(|r| r.mode.is_none()) {
        let mut findings = ctx.findings;
        if ctx.conditional_cors_dropped {
            findings.push(Finding {
                severity: crate::Severity::Warning,
                code: "no-origin-left",
                field: "(origins)".to_owned(),
                message: "only matches with conditions besides the path allowed origins, and a route cannot tell their requests apart: no policy is produced for it".to_owned(),
            });
        } else if !findings.iter().any(|f| f.code == "no-origin-left") {
            findings.push(no_origin_left());
        }
        return Outcome::Nothing(findings);
    }
    let opt_in = services_note(source, &source.name, services);
    Outcome::Policies(vec![PolicyDraft {
        name: source.name.clone(),
        spec: corsair_policy::CorsPolicySpec {
            routes,
            ..crate::empty_spec()
        },
        findings: ctx.findings,
        opt_in,
        incomplete: ctx.incomplete,
    }])
}

/// Turns path matches into routes. `first_match_wins`: rules are tried in order (Istio), so a
/// later match under an earlier one's prefix is never reached; otherwise the longest prefix wins
/// (Gateway API), as in Corsair. A path without CORS under a CORS route's prefix becomes a route
/// with `mode` off (pass-through), so the policy does not add CORS where the source did not.
/// A match with conditions besides the path takes only some requests: where a match without
/// them covers its path, that one decides the route ([`conditional_entries`]).
pub(crate) fn assemble_routes(
    entries: Vec<PathEntry>,
    first_match_wins: bool,
    ctx: &mut Ctx,
) -> Vec<corsair_policy::RouteSpec> {
    let entries = conditional_entries(entries, first_match_wins, ctx);
    // Each path taken: its prefix, whether it was exact, its field, its CORS rules.
    type Taken = (String, bool, String, Option<corsair_policy::RouteSpec>);
    let mut taken: Vec<Taken> = Vec::new();
    let mut routes: Vec<corsair_policy::RouteSpec> = Vec::new();
    let mut without: Vec<PathEntry> = Vec::new();
    for entry in entries {
        let earlier = taken.iter().find(|(prefix, exact, _, _)| {
            if first_match_wins && *exact {
                // An exact match takes its one path.
                entry.exact && entry.prefix == *prefix
            } else if first_match_wins {
                // Istio's prefixes are string prefixes: `/api` takes `/api-v2` too.
                entry.prefix.starts_with(prefix.as_str())
            } else {
                prefix.trim_end_matches('/') == entry.prefix.trim_end_matches('/')
            }
        });
        if let Some((_, _, earlier_field, earlier_rules)) = earlier {
            let this = if entry.rules.is_some() {
                "CORS configuration"
            } else {
                "absence of CORS"
            };
            if first_match_wins {
                if entry.rules.is_some() {
                    shadowed(ctx, &entry);
                }
            } else if entry.rules != *earlier_rules {
                // The Gateway API ranks rules of one path by match type, then by method, headers
                // and query parameters: nothing a route can express, so say which one stays. (The
                // same rules twice, as two matches of one rule give, lose nothing.)
                let kept = if earlier_rules.is_some() {
                    "its CORS rules"
                } else {
                    "no CORS"
                };
                ctx.warn(
                    "same-path-rules",
                    &entry.field,
                    format!("{:?} is also the path of {earlier_field}; the Gateway API chooses between such rules by match type (Exact before PathPrefix), then by method, headers and query parameters, which a policy route cannot tell apart: the policy keeps {earlier_field} ({kept}) for every request under {:?}, and this rule's {this} is not converted", entry.prefix, entry.prefix),
                );
            }
            continue;
        }
        taken.push((
            entry.prefix.clone(),
            entry.exact,
            entry.field.clone(),
            entry.rules.clone(),
        ));
        match entry.rules {
            Some(rules) => routes.push(corsair_policy::RouteSpec {
                path_prefix: entry.prefix,
                ..rules
            }),
            None => without.push(entry),
        }
    }
    // Istio's string prefix gave its CORS rules to paths that only start with it (`/api` took
    // `/api-v2`); a route takes whole segments, so those paths fall to a route that covers them.
    if first_match_wins {
        for (prefix, exact, field, rules) in &taken {
            let Some(rules) = rules.as_ref().filter(|_| !*exact && !prefix.ends_with('/')) else {
                continue;
            };
            let cover = routes
                .iter()
                .filter(|r| r.path_prefix != *prefix && under(prefix, &r.path_prefix))
                .max_by_key(|r| r.path_prefix.trim_end_matches('/').len());
            let same_rules = |cover: &corsair_policy::RouteSpec| {
                let mut cover = cover.clone();
                cover.path_prefix.clone_from(&rules.path_prefix);
                cover == *rules
            };
            if let Some(cover) = cover
                && !same_rules(cover)
            {
                ctx.warn(
                    "string-prefix-falls-through",
                    field,
                    format!("Istio gave these CORS rules to every path that starts with {prefix:?} ({prefix}-v2 and {prefix}x too), but a route takes only {prefix:?} and {prefix}/…: the other paths get the different rules of the route {:?}, which may be MORE open than the source. Add a route with these rules for each such path the application serves", cover.path_prefix),
                );
            }
        }
    }
    let mut extra = Vec::new();
    for entry in without {
        let covering = routes
            .iter()
            .filter(|r| under(&entry.prefix, &r.path_prefix))
            .max_by_key(|r| r.path_prefix.trim_end_matches('/').len());
        if let Some(cover) = covering
            && cover.path_prefix.trim_end_matches('/') == entry.prefix.trim_end_matches('/')
        {
            // `/api/` and `/api`, or an exact `/api` and a prefix `/api`: one route path. The
            // wider of the two source matches decides.
            let cover_exact = taken.iter().any(|(prefix, exact, _, rules)| {
                *exact && rules.is_some() && *prefix == cover.path_prefix
            });
            if cover_exact && !entry.exact {
                let cover = cover.clone();
                let cover_prefix = cover.path_prefix.clone();
                ctx.warn(
                    "same-route-path",
                    &entry.field,
                    format!("{:?} had no CORS configuration and takes every path under it, while the exact path {cover_prefix:?} had CORS; a route takes a path and every path under it alike, so the policy leaves CORS off for both, as for the wider match: {cover_prefix:?} loses its CORS configuration", entry.prefix),
                );
                routes.retain(|r| r.path_prefix != cover_prefix);
                extra.push(corsair_policy::RouteSpec {
                    path_prefix: entry.prefix,
                    mode: Some(corsair_policy::Mode::Disabled),
                    ..cover
                });
            } else {
                ctx.warn(
                    "same-route-path",
                    &entry.field,
                    format!("{:?} had no CORS configuration, but a route cannot tell it from the route {:?}, which takes it and every path under it: the policy gives it that route's CORS rules, MORE open than the source for this path", entry.prefix, cover.path_prefix),
                );
            }
            continue;
        }
        if let Some(cover) = covering {
            ctx.note(
                "no-cors-path-kept",
                &entry.field,
                format!("{:?} had no CORS configuration but lies under the route {:?}: it becomes a route with mode off, so the policy adds no CORS there either", entry.prefix, cover.path_prefix),
            );
            // Istio's string prefix also took paths that only start with it, which a route,
            // matching whole segments, cannot take.
            if first_match_wins && !entry.exact && !entry.prefix.ends_with('/') {
                ctx.warn(
                    "string-prefix-wider",
                    &entry.field,
                    format!("Istio sent every path that starts with {p:?} here, without CORS ({p}-v2 and {p}x too), but a route takes only {p:?} and {p}/…: other paths that start with {p:?} get the CORS rules of the route {:?}, MORE open than the source. Add a route with mode: Disabled for each such path the application serves", cover.path_prefix, p = entry.prefix),
                );
            }
            extra.push(corsair_policy::RouteSpec {
                path_prefix: entry.prefix,
                mode: Some(corsair_policy::Mode::Disabled),
                ..cover.clone()
            });
        }
    }
    routes.extend(extra);
    routes
}

/// Whether a match without conditions, `cover`, takes every path of `entry`.
fn covers(cover: &PathEntry, entry: &PathEntry, first_match_wins: bool) -> bool {
    if cover.exact {
        entry.exact && entry.prefix == cover.prefix
    } else if first_match_wins {
        entry.prefix.starts_with(cover.prefix.as_str())
    } else {
        under(&entry.prefix, &cover.prefix)
    }
}

/// Sorts out the matches with conditions besides the path (headers, method, query parameters,
/// …), which a route cannot express. Such a match takes only the requests that meet them; the
/// path's other requests fall to a match without conditions, if one covers the path. Then that
/// match decides the route, and the conditional one is not converted: a warning says so when
/// their CORS differ, or, in first-match order, when the conditional one came after it and was
/// never reached. A conditional match that nothing else covers is the only source of its path's
/// answers, and becomes a route as if it had no conditions (with CORS, a warning says so).
/// Returns the matches without conditions, then the conditional ones left.
fn conditional_entries(
    entries: Vec<PathEntry>,
    first_match_wins: bool,
    ctx: &mut Ctx,
) -> Vec<PathEntry> {
    let (plain, conditional): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .enumerate()
        .partition(|(_, e)| e.conditions.is_empty());
    let mut uncovered = Vec::new();
    for (index, entry) in conditional {
        let mut covering = plain
            .iter()
            .filter(|(_, p)| covers(p, &entry, first_match_wins));
        // Istio: the first in order; Gateway API: the longest prefix, the first of equals.
        let cover = if first_match_wins {
            covering.next()
        } else {
            covering
                .rev()
                .max_by_key(|(_, p)| p.prefix.trim_end_matches('/').len())
        };
        let conditions = entry.conditions.join(", ");
        let Some((cover_index, cover)) = cover else {
            if entry.rules.is_some() {
                ctx.warn(
                    "match-conditions-ignored",
                    &entry.field,
                    format!("the rule also matches on {conditions}: Corsair routes match on the path only, so these CORS rules apply to every request under the path"),
                );
            }
            uncovered.push(entry);
            continue;
        };
        if first_match_wins && *cover_index < index {
            if entry.rules.is_some() {
                shadowed(ctx, &entry);
            }
            continue;
        }
        // In first-match order the conditional match also took its requests from the matches
        // after it under its prefix (`/api/public` after a canary on `/api`): they decide
        // those paths now.
        let deciders = std::iter::once(cover).chain(
            plain
                .iter()
                .filter(|(i, p)| {
                    first_match_wins
                        && *i > index
                        && *i != *cover_index
                        && p.prefix.starts_with(entry.prefix.as_str())
                })
                .map(|(_, p)| p),
        );
        for decider in deciders {
            if entry.rules == decider.rules {
                continue;
            }
            ctx.conditional_cors_dropped |= entry.rules.is_some();
            let (this, theirs, direction) = match (&entry.rules, &decider.rules) {
                (Some(_), None) => (
                    "CORS configuration",
                    "absence of CORS",
                    ": those requests lose the CORS headers they had",
                ),
                (None, Some(_)) => (
                    "absence of CORS",
                    "CORS rules",
                    ", MORE open than the source for those requests",
                ),
                _ => ("CORS configuration", "CORS rules", ""),
            };
            ctx.warn(
                "conditional-match-not-converted",
                &entry.field,
                format!("this match takes only the requests under {:?} that also match on {conditions}, which a route cannot tell apart from the path's other requests: every request under {:?} gets the {theirs} of {}, and this match's {this} is not converted{direction}", entry.prefix, decider.prefix, decider.field),
            );
        }
    }
    plain.into_iter().map(|(_, e)| e).chain(uncovered).collect()
}

/// A match with CORS that an earlier match (Istio's first-match order) leaves unreached.
fn shadowed(ctx: &mut Ctx, entry: &PathEntry) {
    ctx.warn(
        "shadowed-route",
        &entry.field,
        format!("{:?} is never reached: an earlier match already takes these paths, so this CORS configuration is not converted", entry.prefix),
    );
}

/// Whether a match field asks for something: an empty list or mapping (`headers: []`, as
/// templates often write) matches every request, like an absent one.
pub(crate) fn is_condition(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::String(text) => !text.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}
