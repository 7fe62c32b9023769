//! Traefik: `Middleware` `spec.headers.accessControl*`.
//!
//! What Traefik does: `accessControlAllowOriginList` entries are compared byte for byte, `*`
//! allows every origin; `accessControlAllowOriginListRegex` entries are Go regexes searched
//! anywhere in the origin (not anchored); every preflight is answered by Traefik itself. Traefik
//! v3.6.22, v3.7.6 and later (assumed for `traefik.io`) answer `*` with credentials by echoing
//! the request's origin, so every site could read credentialed responses; `*` in allowed methods
//! and headers then echoes the requested ones, and exposed headers containing `*` are not sent at
//! all. Earlier Traefik, v2 (`traefik.containo.us`, and `traefik.io` since v2.10) and v3 before
//! those, sent `*` literally, which browsers refuse for credentialed requests, and always sent
//! `Access-Control-Max-Age` (0 when not set); where that makes the policy wider for methods or
//! headers, a warning says so.

use corsair_policy::UnmatchedPreflights;
use serde_json::Value;

use super::istio::exact_origin;
use super::{Outcome, Type, at, single, strings};
use crate::example;
use crate::rules::{self, Ctx, Draft, Fields};
use crate::{OptIn, SourceRef};

pub(crate) fn convert(doc: &Value, source: &SourceRef, v2: bool) -> Outcome {
    let h = at(doc, &["spec", "headers"]);
    let has_cors = h
        .as_object()
        .is_some_and(|m| m.keys().any(|k| k.starts_with("accessControl")));
    if !has_cors {
        return Outcome::NotASource;
    }
    let mut ctx = Ctx::default();
    let base = "spec.headers";
    super::check_types(
        h,
        base,
        &[
            ("accessControlAllowOriginList", Type::Texts),
            ("accessControlAllowOriginListRegex", Type::Texts),
            ("accessControlAllowMethods", Type::Texts),
            ("accessControlAllowHeaders", Type::Texts),
            ("accessControlExposeHeaders", Type::Texts),
            ("accessControlAllowCredentials", Type::Bool),
            ("accessControlMaxAge", Type::Integer),
        ],
        &mut ctx,
    );
    let fields = Fields {
        origins: format!("{base}.accessControlAllowOriginList"),
        credentials: format!("{base}.accessControlAllowCredentials"),
        methods: format!("{base}.accessControlAllowMethods"),
        headers: format!("{base}.accessControlAllowHeaders"),
        expose: format!("{base}.accessControlExposeHeaders"),
        max_age: format!("{base}.accessControlMaxAge"),
    };
    let credentials = at(h, &["accessControlAllowCredentials"]).as_bool() == Some(true);
    let mut d = Draft {
        credentials,
        star_headers_echoed: credentials && !v2,
        unmatched: Some(UnmatchedPreflights::Reject),
        fields: fields.clone(),
        ..Draft::default()
    };
    for (k, entry) in strings(at(h, &["accessControlAllowOriginList"]))
        .iter()
        .enumerate()
    {
        exact_origin(entry, &format!("{}[{k}]", fields.origins), &mut d, &mut ctx);
    }
    for (k, re) in strings(at(h, &["accessControlAllowOriginListRegex"]))
        .iter()
        .enumerate()
    {
        let f = format!("{base}.accessControlAllowOriginListRegex[{k}]");
        if let Some(problem) = rules::regex_problem(re) {
            ctx.warn(
                "regex-not-converted",
                &f,
                format!("{re:?} is not valid in Corsair's regex syntax ({problem}): left out, so the origins it matched are no longer allowed"),
            );
            continue;
        }
        if !is_anchored(re) {
            let shown = example::unanchored_example(re, false, |o| rules::full_match(re, o))
                .map(|e| format!(", such as {e}"))
                .unwrap_or_default();
            ctx.warn(
                "origin-anchored",
                &f,
                format!("Traefik searched {re:?} anywhere in the origin, so it also allowed origins that merely contain a match{shown}; Corsair matches a regex against the whole origin"),
            );
        }
        d.regexes.push(re.clone());
    }
    if d.any_origin.is_some() && credentials && v2 {
        ctx.warn(
            "wildcard-credentials-dropped",
            &fields.credentials,
            format!("{} is true with origin \"*\": Traefik v2 sent `Access-Control-Allow-Origin: *` with `Access-Control-Allow-Credentials: true`, which browsers refuse for requests with cookies, so pages only ever read responses without credentials. The policy allows \"*\" without credentials, which is what browsers saw. To allow credentials properly, list the origins that need them and set allowCredentials: true", fields.credentials),
        );
        d.credentials = false;
    }
    let list = |key: &str| Some(strings(at(h, &[key]))).filter(|l| !l.is_empty());
    d.methods = list("accessControlAllowMethods");
    d.headers = list("accessControlAllowHeaders");
    d.expose = list("accessControlExposeHeaders");
    if v2 {
        // Its lists went out joined with commas, a `*` among them as text: the echo came with
        // v3.6.22 and v3.7.6.
        rules::literal_stars(&mut d, &mut ctx, "Traefik v2", rules::StarLists::Literal);
    }
    if !v2 && d.credentials {
        star_echo_is_recent(&d, &fields, &mut ctx);
    }
    if !v2
        && d.credentials
        && d.expose
            .as_ref()
            .is_some_and(|e| e.iter().any(|x| x == "*"))
    {
        ctx.note(
            "expose-wildcard-dropped",
            &format!("{base}.accessControlExposeHeaders"),
            "contains \"*\" while credentials are allowed: Traefik then sent no Access-Control-Expose-Headers at all, so the policy exposes none".to_owned(),
        );
        d.expose = None;
    }
    d.max_age = match at(h, &["accessControlMaxAge"]).as_i64() {
        Some(n) if n >= 0 => Some(n.unsigned_abs()),
        Some(_) => None,
        None if v2 => Some(0),
        None => None,
    };
    let spec = rules::lower(d, &mut ctx).map(rules::top_level);
    let ns = source
        .namespace
        .clone()
        .unwrap_or_else(|| "NAMESPACE".to_owned());
    let opt_in = OptIn::Note(vec![
        format!(
            "the routes that use this middleware name it {ns}-{}@kubernetescrd (IngressRoute middlewares, or the traefik.ingress.kubernetes.io/router.middlewares annotation of an Ingress); annotate the workloads behind their Services:",
            source.name
        ),
        format!(
            "  kubectl annotate deployment NAME -n {ns} corsair.dev/policy={}",
            source.name
        ),
        "and remove the middleware from those routes once the sidecar runs".to_owned(),
    ]);
    single(source, spec, ctx, opt_in)
}

/// `*` in allowed methods or headers with credentials: Traefik echoes what was requested only
/// since v3.6.22 and v3.7.6 (as the policy does); earlier versions sent `*` literally, which
/// browsers take for the name `*` on credentialed requests.
fn star_echo_is_recent(d: &Draft, fields: &Fields, ctx: &mut Ctx) {
    let star = |l: &Option<Vec<String>>| l.as_ref().is_some_and(|l| l.iter().any(|x| x == "*"));
    let lists = [
        (
            star(&d.methods),
            &fields.methods,
            "methods",
            "only GET, HEAD and POST passed on credentialed requests",
        ),
        (
            star(&d.headers),
            &fields.headers,
            "headers",
            "no non-safelisted header passed on credentialed requests, nor Authorization on any",
        ),
    ];
    for (_, field, what, before) in lists.into_iter().filter(|l| l.0) {
        ctx.warn(
            "version-dependent",
            field,
            format!("contains \"*\" while credentials are allowed: Traefik v3.6.22, v3.7.6 and later answer it by echoing the requested {what}, as the policy does; earlier Traefik (v2, and v3 before those) sent \"*\" literally, which browsers take for the name \"*\" with credentials, so {before}. On an earlier Traefik the policy allows more than it did: list the {what} your pages send instead of \"*\""),
        );
    }
}

/// `^…$` around the whole expression, with no top-level alternation: searching equals matching.
pub(crate) fn is_anchored(re: &str) -> bool {
    let Some(inner) = re.strip_prefix('^').and_then(|r| r.strip_suffix('$')) else {
        return false;
    };
    if inner.ends_with('\\') {
        return false;
    }
    let mut depth = 0i32;
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            '|' if depth == 0 => return false,
            _ => {}
        }
    }
    true
}
