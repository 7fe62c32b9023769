//! ingress-nginx: `Ingress` with `nginx.ingress.kubernetes.io/enable-cors` and the `cors-*` annotations.
//!
//! What ingress-nginx does (its cors annotation parser and template):
//! - absent or invalid annotations take its defaults (since v1.9 the annotation validator, on by
//!   default, judges `cors-allow-origin` whole: one entry it cannot read makes it `*`): origin `*`, methods
//!   `GET, PUT, POST, DELETE, PATCH, OPTIONS`, a fixed header list, no exposed headers,
//!   credentials `true`, max age 1728000;
//! - origin `*` (anywhere in the list) sends `Access-Control-Allow-Origin: *` literally, beside
//!   `Access-Control-Allow-Credentials: true` by default, which browsers refuse for credentialed
//!   requests;
//! - other origins become one case-insensitive regex `(o1)|(o2)$` whose `*.` matches exactly one
//!   label (`[A-Za-z0-9-]+`); a match echoes the origin, anything else gets no CORS headers and
//!   preflights go on to the backend;
//! - the preflight answer lists the configured methods and headers without checking the request:
//!   the browser does the checking;
//! - a canary Ingress (`canary: "true"`) ignores its other annotations, CORS included: its
//!   traffic is served with the main Ingress's.

use corsair_policy::UnmatchedPreflights;
use serde_json::Value;

use super::{Outcome, at, services_note, single, text};
use crate::SourceRef;
use crate::rules::{self, Ctx, Draft, Fields};

const PREFIX: &str = "nginx.ingress.kubernetes.io/";
const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
const DEFAULT_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
const DEFAULT_MAX_AGE: u64 = 1_728_000;

/// Annotations that paste raw nginx configuration into the Ingress's server or location block.
const SNIPPETS: [&str; 2] = ["configuration-snippet", "server-snippet"];

/// CORS headers written by hand in a snippet are outside the annotations this tool converts:
/// say so, so that nobody believes the policy carries them.
fn snippets(annotations: &Value, ctx: &mut Ctx) {
    for name in SNIPPETS {
        let Some(snippet) = text(at(annotations, &[&format!("{PREFIX}{name}")])) else {
            continue;
        };
        if snippet.to_ascii_lowercase().contains("access-control-") {
            ctx.warn(
                "snippet-not-converted",
                &format!("metadata.annotations[{PREFIX}{name}]"),
                "sets Access-Control-* headers in raw nginx configuration, which this tool does not read: those headers are not in any policy produced here; write them as CorsPolicy fields by hand (`corsair check` tells you whether they mean what you want)".to_owned(),
            );
        }
    }
}

pub(crate) fn convert(doc: &Value, source: &SourceRef) -> Outcome {
    let annotations = at(doc, &["metadata", "annotations"]);
    let get = |name: &str| text(at(annotations, &[&format!("{PREFIX}{name}")]));
    let field = |name: &str| format!("metadata.annotations[{PREFIX}{name}]");
    let mut ctx = Ctx::default();

    let has_cors = annotations.as_object().is_some_and(|m| {
        m.keys().any(|k| {
            k.starts_with(&format!("{PREFIX}cors-")) || k == &format!("{PREFIX}enable-cors")
        })
    });
    snippets(annotations, &mut ctx);
    if !has_cors {
        return if ctx.findings.is_empty() {
            Outcome::NotASource
        } else {
            Outcome::Nothing(ctx.findings)
        };
    }
    match get("enable-cors").as_deref().map(go_bool) {
        Some(Some(true)) => {}
        other => {
            let why = match other {
                None => "is not set".to_owned(),
                Some(None) => "is not a boolean (ingress-nginx reads it as false)".to_owned(),
                Some(Some(_)) => "is false".to_owned(),
            };
            ctx.note(
                "cors-disabled",
                &field("enable-cors"),
                format!("{why}: ingress-nginx adds no CORS headers for this Ingress, so there is nothing to convert"),
            );
            return Outcome::Nothing(ctx.findings);
        }
    }

    if get("canary").as_deref().and_then(go_bool) == Some(true) {
        ctx.warn(
            "canary-ignored",
            &field("canary"),
            "a canary Ingress: ingress-nginx ignores its other annotations, so these CORS annotations were never applied and are not converted; its traffic got the CORS rules of the main Ingress of the same host and path, so give the canary's workloads the policy converted from that Ingress".to_owned(),
        );
        return Outcome::Nothing(ctx.findings);
    }
    let fields = Fields {
        origins: field("cors-allow-origin"),
        credentials: field("cors-allow-credentials"),
        methods: field("cors-allow-methods"),
        headers: field("cors-allow-headers"),
        expose: field("cors-expose-headers"),
        max_age: field("cors-max-age"),
    };
    let mut d = Draft {
        fields: fields.clone(),
        // Preflights from other origins went on to the backend.
        unmatched: Some(UnmatchedPreflights::Forward),
        ..Draft::default()
    };

    d.credentials = match get("cors-allow-credentials") {
        None => true,
        Some(v) => go_bool(&v).unwrap_or_else(|| {
            ctx.note(
                "invalid-value",
                &fields.credentials,
                format!("{v:?} is not a boolean: ingress-nginx used its default, true"),
            );
            true
        }),
    };

    origins(get("cors-allow-origin"), &fields.origins, &mut d, &mut ctx);
    if d.any_origin.is_some() && d.credentials {
        ctx.warn(
            "wildcard-credentials-dropped",
            &fields.credentials,
            format!(
                "{} is true (ingress-nginx's default) with origin \"*\": ingress-nginx sent `Access-Control-Allow-Origin: *` with `Access-Control-Allow-Credentials: true`, which browsers refuse for requests with cookies, so pages only ever read responses without credentials. The policy allows \"*\" without credentials, which is what browsers saw. To allow credentials properly, list the origins that need them in allowOrigins and set allowCredentials: true",
                fields.credentials
            ),
        );
        d.credentials = false;
    }

    d.methods = Some(validated(
        get("cors-allow-methods"),
        METHODS_PATTERN,
        DEFAULT_METHODS,
        &fields.methods,
        &mut ctx,
    ));
    let headers = get("cors-allow-headers");
    if let Some(v) = &headers
        && accepted(v, HEADERS_PATTERN).is_some()
        && !matches(OLD_HEADERS_PATTERN, &normalized(v))
    {
        ctx.note(
            "version-dependent",
            &fields.headers,
            format!("{v:?} passes the header check of ingress-nginx v1.9 and later, which the policy follows; earlier versions refused it and used their default ({DEFAULT_HEADERS})"),
        );
    }
    d.headers = Some(validated(
        headers,
        HEADERS_PATTERN,
        DEFAULT_HEADERS,
        &fields.headers,
        &mut ctx,
    ));
    d.expose = Some(validated(
        get("cors-expose-headers"),
        EXPOSE_PATTERN,
        "",
        &fields.expose,
        &mut ctx,
    ));
    d.max_age = match get("cors-max-age") {
        None => Some(DEFAULT_MAX_AGE),
        Some(v) => {
            // As Go's strconv.Atoi reads it: no space around the digits.
            match v.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n.unsigned_abs()),
                Ok(_) => None,
                Err(_) => {
                    ctx.note("invalid-value", &fields.max_age, format!("{v:?} is not an integer: ingress-nginx used its default, {DEFAULT_MAX_AGE}"));
                    Some(DEFAULT_MAX_AGE)
                }
            }
        }
    };

    let spec = rules::lower(d, &mut ctx).map(rules::top_level);
    let scoped = scoped_paths(doc);
    if spec.is_some() && !scoped.is_empty() {
        ctx.warn(
            "paths-not-routes",
            "spec.rules",
            format!("ingress-nginx added these CORS headers only on this Ingress's paths ({}); the policy applies to every path of the workloads you annotate, so paths they serve through other Ingresses without CORS get it too, MORE open than before: add a route with mode: Disabled for each of those", scoped.join(", ")),
        );
    }
    let opt_in = services_note(source, &source.name, &backend_services(doc));
    single(source, spec, ctx, opt_in)
}

/// `cors-allow-origin` as ingress-nginx reads it.
fn origins(value: Option<String>, field: &str, d: &mut Draft, ctx: &mut Ctx) {
    // An empty or blank value is an error to ingress-nginx's parser, which then uses its default.
    let Some(value) = value.as_ref().filter(|v| !v.trim().is_empty()) else {
        let why = if value.is_some() { "empty" } else { "not set" };
        ctx.note(
            "default-origin",
            field,
            format!("{why}: ingress-nginx's default is \"*\""),
        );
        d.any_origin = Some(field.to_owned());
        return;
    };
    // v1.9 and later: the whole value, spaces removed, or ingress-nginx uses "*" instead.
    if !matches(ORIGINS_VALIDATOR, &value.replace(' ', "")) {
        let read = origin_entries(value)
            .filter(|e| matches(ORIGIN_PATTERN, e))
            .collect::<Vec<_>>();
        ctx.warn(
            "origin-annotation-refused",
            field,
            format!("{value:?} does not pass ingress-nginx's validation (v1.9 and later, where annotation validation is on by default), so it used its default, \"*\", and the policy does the same; before v1.9 it skipped only the entries it could not read and allowed {read:?}"),
        );
        d.any_origin = Some(field.to_owned());
        return;
    }
    let valid = regex::Regex::new(ORIGIN_PATTERN).expect("constant regex");
    for entry in origin_entries(value) {
        if entry == "*" {
            d.any_origin = Some(field.to_owned());
            d.origins.clear();
            d.regexes.clear();
            d.null_origin = false;
            return;
        }
        if !valid.is_match(entry) {
            ctx.warn(
                "origin-ignored",
                field,
                format!("{entry:?} is not an origin ingress-nginx's parser reads (scheme://host[:port], scheme://*.host, null or *), so it skipped the entry; the policy leaves it out"),
            );
            continue;
        }
        if entry == "null" {
            d.null_origin = true;
            ctx.warn(
                "origin-anchored",
                field,
                "\"null\": ingress-nginx's origin regex is not anchored at the start, so it also allowed any origin ending in \"null\", such as http://webnull; the policy allows only `Origin: null` (allowNullOrigin: true)".to_owned(),
            );
            continue;
        }
        let lower = entry.to_ascii_lowercase();
        if let Some((scheme, host)) = lower.split_once("://*.") {
            let re = format!(
                "{}://[a-z0-9-]+\\.{}",
                regex::escape(scheme),
                regex::escape(host)
            );
            ctx.note(
                "one-label-wildcard",
                field,
                format!("{entry:?} matched exactly one DNS label in ingress-nginx; a Corsair wildcard matches one or more, so it becomes the regex {re:?}, which keeps deeper subdomains out as before"),
            );
            d.regexes.push(re);
            continue;
        }
        if let Some(problem) = rules::origin_problem(&lower) {
            ctx.note(
                "origin-never-matched",
                field,
                format!(
                    "{entry:?} could never match an origin a browser sends ({problem}): left out"
                ),
            );
            continue;
        }
        if lower != entry {
            ctx.note(
                "origin-lowercased",
                field,
                format!("{entry:?} written as {lower:?}: ingress-nginx compared origins case-insensitively and browsers send them in lowercase"),
            );
        }
        d.origins.push(lower);
    }
}

/// `corsOriginRegexValidator`: what the whole `cors-allow-origin` value, spaces removed, must
/// match since v1.9.
const ORIGINS_VALIDATOR: &str = r"^((((([a-z]+://)?(\*\.)?[A-Za-z0-9\-.]*(:\d+)?,?)|null)+)|\*)?$";
/// `corsOriginRegex`: what each entry must match to be kept.
const ORIGIN_PATTERN: &str = r"^([a-z]+://(\*\.)?[A-Za-z0-9\-.]*(:\d+)?|\*|null)?$";

/// The entries of `cors-allow-origin`, as ingress-nginx splits and trims them.
fn origin_entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// The paths an Ingress serves when they are not all of them (`/`), for the finding that the
/// policy is not limited to them.
fn scoped_paths(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for rule in at(doc, &["spec", "rules"]).as_array().into_iter().flatten() {
        for path in at(rule, &["http", "paths"])
            .as_array()
            .into_iter()
            .flatten()
        {
            let p = at(path, &["path"]).as_str().unwrap_or("/");
            if p != "/" && !p.is_empty() {
                super::push_unique(&mut out, p.to_owned());
            }
        }
    }
    out
}

/// ingress-nginx's patterns for the list annotations (`\s` spelled as Go's ASCII class).
const METHODS_PATTERN: &str = r"^([A-Za-z]+,?[\t\n\f\r ]?)+$";
/// `parser.HeadersVariable`, used for `cors-allow-headers` since v1.9.
const HEADERS_PATTERN: &str = r"^[A-Za-z0-9\-_, ]*$";
/// What `cors-allow-headers` had to match before v1.9.
const OLD_HEADERS_PATTERN: &str = r"^([A-Za-z0-9\-_]+,?[\t\n\f\r ]?)+$";
const EXPOSE_PATTERN: &str = r"^(([A-Za-z0-9\-_]+|\*),?[\t\n\f\r ]?)+$";

/// The value ingress-nginx uses for a list annotation, or `None` when it falls back to its
/// default. Since v1.9 the annotation validator (on by default) first checks the value with its
/// spaces removed and refuses line breaks; then each line is trimmed, an empty result is an
/// error, and the parser checks what is left against the same pattern.
fn accepted(value: &str, pattern: &str) -> Option<String> {
    if !value.is_empty() {
        let compact = value.replace(' ', "");
        if !matches(pattern, &compact) || compact.contains(['\r', '\n']) {
            return None;
        }
    }
    Some(normalized(value)).filter(|v| matches(pattern, v))
}

/// ingress-nginx's `normalizeString`: each line trimmed.
fn normalized(value: &str) -> String {
    value
        .split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A non-empty value that `pattern` matches.
fn matches(pattern: &str, value: &str) -> bool {
    !value.is_empty() && regex::Regex::new(pattern).is_ok_and(|re| re.is_match(value))
}

/// An annotation list that ingress-nginx replaces by its default when it fails its pattern.
fn validated(
    value: Option<String>,
    pattern: &str,
    default: &str,
    field: &str,
    ctx: &mut Ctx,
) -> Vec<String> {
    let Some(value) = value else {
        return rules::split_list(default);
    };
    if let Some(kept) = accepted(&value, pattern) {
        rules::split_list(&kept)
    } else {
        let shown = if default.is_empty() { "none" } else { default };
        ctx.note(
            "invalid-value",
            field,
            format!("{value:?} does not pass ingress-nginx's validation, so it used its default ({shown}); the policy does the same"),
        );
        rules::split_list(default)
    }
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn backend_services(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let spec = at(doc, &["spec"]);
    let mut push = |backend: &Value| {
        let name = at(backend, &["service", "name"])
            .as_str()
            .or_else(|| at(backend, &["serviceName"]).as_str());
        if let Some(name) = name {
            super::push_unique(&mut out, name.to_owned());
        }
    };
    push(at(spec, &["defaultBackend"]));
    push(at(spec, &["backend"]));
    for rule in at(spec, &["rules"]).as_array().into_iter().flatten() {
        for path in at(rule, &["http", "paths"])
            .as_array()
            .into_iter()
            .flatten()
        {
            push(at(path, &["backend"]));
        }
    }
    out
}
