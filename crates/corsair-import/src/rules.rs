//! What every source converts into: one level of CORS rules, lowered to a `RouteSpec` with the
//! conversion rules that hold for every source.

use corsair_policy::{CorsPolicySpec, MAX_AGE_BROWSER_CAP, RouteSpec, UnmatchedPreflights};

use crate::{Finding, Severity};

/// The methods browsers allow after any successful preflight, whatever the server lists.
pub(crate) const SAFELISTED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// Origins anyone can register: a regex that matches one of them allows every site.
const PROBES: [&str; 3] = [
    "https://attacker.example",
    "https://attacker.com",
    "http://attacker.com",
];

/// Findings and the "left incomplete" mark of one converted object.
#[derive(Default)]
pub(crate) struct Ctx {
    pub findings: Vec<Finding>,
    pub incomplete: bool,
    /// A match with conditions besides the path had CORS that a route could not keep.
    pub conditional_cors_dropped: bool,
}

impl Ctx {
    pub fn push(&mut self, severity: Severity, code: &'static str, field: &str, message: String) {
        self.findings.push(Finding {
            severity,
            code,
            field: field.to_owned(),
            message,
        });
    }
    pub fn note(&mut self, code: &'static str, field: &str, message: String) {
        self.push(Severity::Note, code, field, message);
    }
    pub fn warn(&mut self, code: &'static str, field: &str, message: String) {
        self.push(Severity::Warning, code, field, message);
    }
}

/// The source fields a level's findings point at.
#[derive(Default, Clone)]
pub(crate) struct Fields {
    pub origins: String,
    pub credentials: String,
    pub methods: String,
    pub headers: String,
    pub expose: String,
    pub max_age: String,
}

impl Fields {
    /// The names Gateway API, Istio and Envoy Gateway share for their CORS fields, under `base`.
    pub fn allow_style(base: &str) -> Fields {
        Fields {
            origins: format!("{base}.allowOrigins"),
            credentials: format!("{base}.allowCredentials"),
            methods: format!("{base}.allowMethods"),
            headers: format!("{base}.allowHeaders"),
            expose: format!("{base}.exposeHeaders"),
            max_age: format!("{base}.maxAge"),
        }
    }
}

/// One level of rules, in terms of what the source made browsers see.
#[derive(Default)]
pub(crate) struct Draft {
    /// The source allowed every origin (the field that says so).
    pub any_origin: Option<String>,
    /// Origins in the form browsers send, or `https://*.example.com` wildcards.
    pub origins: Vec<String>,
    /// Regexes matched against the whole origin.
    pub regexes: Vec<String>,
    pub null_origin: bool,
    /// `None`: the source sent no `Access-Control-Allow-Methods` (only safelisted methods pass).
    pub methods: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
    pub expose: Option<Vec<String>>,
    pub credentials: bool,
    pub max_age: Option<u64>,
    pub unmatched: Option<UnmatchedPreflights>,
    /// The source answered `*` in allowed headers by echoing the requested ones, `Authorization` included.
    pub star_headers_echoed: bool,
    pub fields: Fields,
}

/// How a source answered a `*` in its method or header list.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StarLists {
    /// It echoed the request's method or headers for a list that was exactly `*`, and sent any
    /// other list as text (Envoy: Istio, ESPv2).
    EchoLoneStar,
    /// It sent every list as text (ESP's nginx, Traefik v2).
    Literal,
}

/// A `*` that reached browsers as text in a method or header list: browsers read it as any
/// method or header (never `Authorization`) without credentials, and as a name that matches
/// nothing with them. A policy cannot answer by the request's credentials mode: with
/// credentials the `*` is left out (a Corsair `*` would echo the request, more than the source
/// allowed); without them it is what a Corsair `*` means, `Authorization` not added.
pub(crate) fn literal_stars(d: &mut Draft, ctx: &mut Ctx, source: &str, how: StarLists) {
    let credentials = d.credentials;
    let fields = d.fields.clone();
    let why = match how {
        StarLists::EchoLoneStar => {
            ", which Envoy does not read as a wildcard (only a list that is exactly \"*\" echoes \
             the request)"
        }
        StarLists::Literal => " (it never echoed the request's method or headers)",
    };
    let mut literal_header_star = false;
    for (list, field, what) in [
        (&mut d.methods, &fields.methods, "method"),
        (&mut d.headers, &fields.headers, "header"),
    ] {
        let Some(items) = list.as_mut() else { continue };
        let names: Vec<String> = items.iter().flat_map(|i| split_list(i)).collect();
        let echoed = how == StarLists::EchoLoneStar && names.len() < 2;
        if !names.iter().any(|n| n == "*") || echoed {
            continue;
        }
        literal_header_star |= what == "header";
        let sent = names.join(",");
        if credentials {
            items.retain(|i| split_list(i).iter().all(|n| n != "*"));
            ctx.warn(
                "star-sent-literally",
                field,
                format!("{source} sent this list as the text {sent:?}{why}. Browsers read that \"*\" as any {what} for requests without credentials, and as a {what} named \"*\" for requests with them; a policy cannot answer by the request's credentials mode, so it leaves the \"*\" out and allows only the {what}s named: requests without credentials lose what the \"*\" allowed them"),
            );
        } else if what == "header" {
            ctx.note(
                "star-sent-literally",
                field,
                format!("{source} sent this list as the text {sent:?}{why}; browsers read its \"*\" as any header but Authorization, as a Corsair \"*\" does, so Authorization is not added"),
            );
        }
    }
    if literal_header_star && !credentials {
        // The browser's `*`, not an echo: Authorization stays refused.
        d.star_headers_echoed = false;
    }
}

/// Lowers a draft; `None` when the source never allowed an origin a browser sends.
pub(crate) fn lower(mut d: Draft, ctx: &mut Ctx) -> Option<RouteSpec> {
    let f = d.fields.clone();
    let open_regex = d.regexes.iter().find_map(|re| {
        PROBES
            .iter()
            .find(|p| full_match(re, p))
            .map(|p| (re.clone(), *p))
    });
    if d.credentials && (d.any_origin.is_some() || open_regex.is_some()) {
        let what = match (&d.any_origin, &open_regex) {
            (Some(field), _) => format!("{field} allows every origin"),
            (None, Some((re, probe))) => {
                format!("the origin regex {re:?} matches any site, such as {probe}")
            }
            (None, None) => String::new(),
        };
        ctx.push(
            Severity::Incomplete,
            "wildcard-credentials-refused",
            &f.origins,
            format!(
                "{what} and {} is true: the source echoed each origin with credentials, so any web site could read this API's responses with the user's cookies. Corsair never converts that. The policy is left with an empty allowOrigins, which corsair check refuses: list the origins that may send credentials there, or, if no page needs cookies, set allowOrigins: [\"*\"] and allowCredentials: false",
                f.credentials
            ),
        );
        ctx.incomplete = true;
        d.any_origin = None;
        d.origins.clear();
        d.regexes.clear();
        d.null_origin = false;
    } else if d.any_origin.is_none()
        && d.origins.is_empty()
        && d.regexes.is_empty()
        && !d.null_origin
    {
        return None;
    }

    // Sources that take list items as written (Istio, Envoy Gateway, Traefik) join them with
    // commas, so an item "A, B" or " A" reaches browsers as names they read apart and trim.
    for list in [&mut d.methods, &mut d.headers, &mut d.expose] {
        if let Some(items) = list.take() {
            *list = Some(items.iter().flat_map(|item| split_list(item)).collect());
        }
    }
    let methods_bad = unparsable(d.methods.as_ref());
    if let Some((field, item)) = methods_bad
        .map(|item| (&f.methods, item))
        .or_else(|| unparsable(d.headers.as_ref()).map(|item| (&f.headers, item)))
    {
        ctx.warn(
            "unparsable-list",
            field,
            format!(
                "{item:?} is not one name (commas separate them), so browsers could not parse \
                 the list and every preflight failed: the policy allows no method beyond GET, \
                 HEAD and POST and no request header, as browsers saw. To allow them, write \
                 each name as an item of its own"
            ),
        );
        d.methods = None;
        d.headers = None;
    }
    if let Some(item) = unparsable(d.expose.as_ref()) {
        ctx.warn(
            "unparsable-list",
            &f.expose,
            format!(
                "{item:?} is not one name (commas separate them), so browsers could not parse \
                 the list and exposed none of its headers: the policy exposes none. To expose \
                 them, write each name as an item of its own"
            ),
        );
        d.expose = None;
    }
    let methods = d.methods.filter(|m| !m.is_empty()).map(|mut list| {
        if !list.iter().any(|m| m == "*") {
            let added: Vec<&str> = SAFELISTED_METHODS
                .iter()
                .copied()
                .filter(|s| !list.iter().any(|m| m == s))
                .collect();
            if !added.is_empty() {
                ctx.note(
                    "safelisted-methods-added",
                    &f.methods,
                    format!(
                        "{} added: browsers allow them after any successful preflight whatever the list says, and so does Corsair; listed, the policy says what browsers saw",
                        added.join(", ")
                    ),
                );
                list.extend(added.iter().map(|m| (*m).to_owned()));
            }
        }
        list
    });

    let headers = d.headers.filter(|h| !h.is_empty()).map(|mut list| {
        let star = list.iter().any(|h| h == "*");
        let has_auth = list.iter().any(|h| h.eq_ignore_ascii_case("authorization"));
        if star && d.star_headers_echoed && !has_auth {
            ctx.note(
                "authorization-added",
                &f.headers,
                "Authorization added beside \"*\": the source answered \"*\" by echoing the requested headers, Authorization included, while a Corsair \"*\" never covers Authorization".to_owned(),
            );
            list.push("Authorization".to_owned());
        }
        list
    });

    let max_age = d.max_age.map(|age| {
        if age > u64::from(MAX_AGE_BROWSER_CAP) {
            let firefox = age.min(86_400);
            ctx.warn(
                "max-age-capped",
                &f.max_age,
                format!(
                    "{age} seconds is more than Chromium honours (it caps preflight caching at {MAX_AGE_BROWSER_CAP} seconds, Firefox at 86400): kept {MAX_AGE_BROWSER_CAP}, so Chromium sees no change and Firefox asks again after {MAX_AGE_BROWSER_CAP} seconds instead of {firefox}"
                ),
            );
            MAX_AGE_BROWSER_CAP
        } else {
            u32::try_from(age).unwrap_or(MAX_AGE_BROWSER_CAP)
        }
    });

    if let Some(field) = &d.any_origin
        && !d.null_origin
    {
        ctx.warn(
            "null-origin-not-covered",
            field,
            "allowed every origin, `Origin: null` included (sandboxed iframes, file: pages, some redirects); a Corsair \"*\" leaves null out. Add allowNullOrigin: true if such pages must keep reading these responses".to_owned(),
        );
    } else if !d.null_origin
        && let Some(re) = d.regexes.iter().find(|re| full_match(re, "null"))
    {
        ctx.warn(
            "null-origin-not-covered",
            &f.origins,
            format!("the origin regex {re:?} matched `Origin: null` (sandboxed iframes, file: pages, some redirects), which the source allowed; Corsair never matches a regex against null, so the policy leaves it out. Add allowNullOrigin: true if such pages must keep reading these responses"),
        );
    }
    let mut origins = d.origins;
    if d.any_origin.is_some() {
        origins = vec!["*".to_owned()];
    }
    dedup(&mut origins);
    dedup(&mut d.regexes);
    Some(RouteSpec {
        path_prefix: String::new(),
        allow_origins: (ctx.incomplete || !origins.is_empty()).then_some(origins),
        allow_origin_regexes: (!d.regexes.is_empty()).then_some(d.regexes),
        allow_null_origin: d.null_origin.then_some(true),
        allow_methods: methods,
        allow_headers: headers,
        expose_headers: d.expose.filter(|e| !e.is_empty()),
        allow_credentials: d.credentials.then_some(true),
        max_age,
        // Reject is the default: written only when the source forwarded.
        unmatched_preflights: d.unmatched.filter(|u| *u == UnmatchedPreflights::Forward),
        ..RouteSpec::default()
    })
}

/// The first item of a method or header list, split at commas and trimmed, that is not a name
/// (`"X-A X-B"`, which ingress-nginx's patterns let through and Istio does not check). Browsers
/// refuse the whole list then: Chromium and Firefox fail the preflight on such an `Access-Control-Allow-Methods`
/// or `-Headers`, and the Fetch standard exposes nothing from such an `-Expose-Headers`.
fn unparsable(list: Option<&Vec<String>>) -> Option<&str> {
    list.into_iter()
        .flatten()
        .map(String::as_str)
        .find(|item| !corsair_policy::is_token(item))
}

fn dedup(list: &mut Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    list.retain(|item| {
        if seen.contains(item) {
            false
        } else {
            seen.push(item.clone());
            true
        }
    });
}

/// The top-level spec with the rules of `r` (its `pathPrefix` ignored).
pub(crate) fn top_level(r: RouteSpec) -> CorsPolicySpec {
    CorsPolicySpec {
        routes: Vec::new(),
        allow_origins: r.allow_origins,
        allow_origin_regexes: r.allow_origin_regexes,
        allow_null_origin: r.allow_null_origin,
        allow_methods: r.allow_methods,
        allow_headers: r.allow_headers,
        expose_headers: r.expose_headers,
        allow_credentials: r.allow_credentials,
        max_age: r.max_age,
        allow_private_network: r.allow_private_network,
        preflight_status: r.preflight_status,
        unmatched_preflights: r.unmatched_preflights,
        disallowed_requests: r.disallowed_requests,
        mode: r.mode,
    }
}

/// Whether `re` matches the whole of `text` (what Corsair and Envoy do).
pub(crate) fn full_match(re: &str, text: &str) -> bool {
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(text))
}

/// Why `entry` can never equal an `Origin` header a browser sends, as the policy crate sees it.
pub(crate) fn origin_problem(entry: &str) -> Option<String> {
    let spec = CorsPolicySpec {
        allow_origins: Some(vec![entry.to_owned()]),
        ..CorsPolicySpec::default()
    };
    corsair_policy::validate(&spec)
        .errors()
        .find(|f| f.code == "invalid-origin")
        .map(|f| f.message.clone())
}

/// Whether a regex compiles in Rust's syntax, as the policy crate will compile it.
pub(crate) fn regex_problem(re: &str) -> Option<String> {
    match regex::Regex::new(re).and_then(|_| regex::Regex::new(&format!("^(?:{re})$"))) {
        Ok(_) => None,
        Err(e) => Some(corsair_policy::regex_error_line(&e)),
    }
}

/// Splits a comma-separated header or method list as browsers do: items trimmed of spaces and
/// tabs, empty ones dropped.
pub(crate) fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|item| item.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses a Go / Gateway API / protobuf duration (`90s`, `1h30m`, `1.5h`, `500ms`) into whole
/// seconds, rounded down; a bare number is seconds.
pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total >= 0.0).then_some(total as u64)
}
