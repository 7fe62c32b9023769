//! Validation errors and lints, each naming the field path and the value.

use crate::engine::{canonical_path, is_token, needs_canonical, normalize_prefix};
use crate::model::{CorsPolicySpec, RouteSpec};
use crate::origin::{
    HostSpelling, OriginPattern, browser_host, ends_in_number, is_special, parse_config_origin,
    split_host_port,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem with a policy: `spec.allowOrigins[2]: "https://app.example.com/" is not an origin: it has a path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Field path such as `spec.routes[1].allowOrigins[2]`.
    pub path: String,
    /// A stable identifier for lints (`null-origin`, `mixed-scheme`, …) and errors.
    pub code: &'static str,
    /// What is wrong and, for warnings, the risk; includes the offending value.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every finding for a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Chromium's cap on `Access-Control-Max-Age`; a larger value is silently lowered.
pub const MAX_AGE_BROWSER_CAP: u32 = 7200;

/// Validates and lints `spec`; field paths start at `spec.`.
pub fn validate(spec: &CorsPolicySpec) -> Report {
    let mut out = Findings::default();
    let top = Level::top(spec);
    check_level(&mut out, &top, None, !spec.routes.is_empty());
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let level = Level::route(spec, route, i);
        let prefix = &route.path_prefix;
        let path = format!("{}.pathPrefix", level.base);
        if !prefix.starts_with('/') {
            out.error(
                &path,
                "invalid-path-prefix",
                format!("{prefix:?} is not a path prefix: it must start with \"/\""),
            );
        } else if prefix.contains(['?', '#']) {
            out.error(
                &path,
                "invalid-path-prefix",
                format!("{prefix:?} is not a path prefix: it has a query or fragment"),
            );
        } else {
            // Requests are routed on their decoded, normalised path (`engine::route_path`).
            if needs_canonical(prefix) {
                let canonical = canonical_path(prefix);
                if canonical != normalize_prefix(prefix) {
                    out.warn(
                        &path,
                        "route-never-matches",
                        format!("{prefix:?} never matches: requests are routed on their decoded, normalised path (escapes decoded, `;` parameters, `.` and `..` segments resolved), so write it as {canonical:?}"),
                    );
                }
            }
            let normalized = normalize_prefix(prefix);
            if let Some((_, first)) = seen.iter().find(|(p, _)| *p == normalized) {
                out.error(
                    &path,
                    "duplicate-route",
                    format!("{prefix:?} is the same prefix as spec.routes[{first}]: only one of them could ever match"),
                );
            } else {
                seen.push((normalized, i));
            }
        }
        check_level(&mut out, &level, Some(&top), false);
    }
    out.report
}

#[derive(Default)]
struct Findings {
    report: Report,
}

impl Findings {
    fn push(&mut self, severity: Severity, path: &str, code: &'static str, message: String) {
        self.report.findings.push(Finding {
            severity,
            path: path.to_owned(),
            code,
            message,
        });
    }
    fn error(&mut self, path: &str, code: &'static str, message: String) {
        self.push(Severity::Error, path, code, message);
    }
    fn warn(&mut self, path: &str, code: &'static str, message: String) {
        self.push(Severity::Warning, path, code, message);
    }
}

/// The fields of one level: `own` are the ones written there, the others come from inheritance.
struct Level<'s> {
    base: String,
    own: Rules<'s>,
    effective: Rules<'s>,
}

#[derive(Clone, Copy)]
struct Rules<'s> {
    allow_origins: Option<&'s Vec<String>>,
    allow_origin_regexes: Option<&'s Vec<String>>,
    allow_null_origin: Option<bool>,
    allow_methods: Option<&'s Vec<String>>,
    allow_headers: Option<&'s Vec<String>>,
    expose_headers: Option<&'s Vec<String>>,
    allow_credentials: Option<bool>,
    max_age: Option<u32>,
    preflight_status: Option<u16>,
}

macro_rules! rules_of {
    ($s:expr) => {
        Rules {
            allow_origins: $s.allow_origins.as_ref(),
            allow_origin_regexes: $s.allow_origin_regexes.as_ref(),
            allow_null_origin: $s.allow_null_origin,
            allow_methods: $s.allow_methods.as_ref(),
            allow_headers: $s.allow_headers.as_ref(),
            expose_headers: $s.expose_headers.as_ref(),
            allow_credentials: $s.allow_credentials,
            max_age: $s.max_age,
            preflight_status: $s.preflight_status,
        }
    };
}

impl<'s> Level<'s> {
    fn top(spec: &'s CorsPolicySpec) -> Self {
        let own = rules_of!(spec);
        Level {
            base: "spec".to_owned(),
            own,
            effective: own,
        }
    }

    fn route(spec: &'s CorsPolicySpec, route: &'s RouteSpec, i: usize) -> Self {
        let own = rules_of!(route);
        let top = rules_of!(spec);
        Level {
            base: format!("spec.routes[{i}]"),
            own,
            effective: Rules {
                allow_origins: own.allow_origins.or(top.allow_origins),
                allow_origin_regexes: own.allow_origin_regexes.or(top.allow_origin_regexes),
                allow_null_origin: own.allow_null_origin.or(top.allow_null_origin),
                allow_methods: own.allow_methods.or(top.allow_methods),
                allow_headers: own.allow_headers.or(top.allow_headers),
                expose_headers: own.expose_headers.or(top.expose_headers),
                allow_credentials: own.allow_credentials.or(top.allow_credentials),
                max_age: own.max_age.or(top.max_age),
                preflight_status: own.preflight_status.or(top.preflight_status),
            },
        }
    }
}

/// Checks one level. Fields are checked where they are written; combinations are checked on the
/// effective (inherited) values, and reported on a route only when the route wrote one of them,
/// so one mistake at the top level is reported once.
fn check_level(out: &mut Findings, level: &Level<'_>, top: Option<&Level<'_>>, has_routes: bool) {
    let base = &level.base;
    let own = &level.own;
    let eff = &level.effective;
    let is_route = top.is_some();

    if let Some(origins) = own.allow_origins {
        check_origins(out, base, origins);
    }
    if let Some(regexes) = own.allow_origin_regexes {
        check_regexes(out, base, regexes);
    }
    if let Some(methods) = own.allow_methods {
        check_tokens(
            out,
            &format!("{base}.allowMethods"),
            methods,
            "invalid-method",
            "method",
        );
        // Fetch uppercases these six in Access-Control-Request-Method; any other is sent as
        // written, so only these spellings are sure never to match.
        for (i, method) in methods.iter().enumerate() {
            let upper = method.to_ascii_uppercase();
            if upper != *method
                && ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"].contains(&upper.as_str())
            {
                out.warn(
                    &format!("{base}.allowMethods[{i}]"),
                    "method-never-matches",
                    format!("{method:?} never matches: browsers send it as {upper:?} (the Fetch standard uppercases DELETE, GET, HEAD, OPTIONS, POST and PUT); write {upper:?}"),
                );
            }
        }
    }
    if let Some(headers) = own.allow_headers {
        check_tokens(
            out,
            &format!("{base}.allowHeaders"),
            headers,
            "invalid-header-name",
            "header name",
        );
    }
    if let Some(headers) = own.expose_headers {
        check_tokens(
            out,
            &format!("{base}.exposeHeaders"),
            headers,
            "invalid-header-name",
            "header name",
        );
    }
    if let Some(status) = own.preflight_status
        && status != 200
        && status != 204
    {
        out.error(
            &format!("{base}.preflightStatus"),
            "invalid-preflight-status",
            format!(
                "{status} is not allowed: use 200 (what Gateway API and old clients expect) or 204"
            ),
        );
    }
    if let Some(max_age) = own.max_age
        && max_age > MAX_AGE_BROWSER_CAP
    {
        out.warn(
            &format!("{base}.maxAge"),
            "max-age-above-browser-cap",
            format!("{max_age} seconds is more than browsers honour: Chromium caps preflight caching at {MAX_AGE_BROWSER_CAP} seconds, so the extra time only delays policy changes in other browsers"),
        );
    }
    if own.allow_null_origin == Some(true) {
        out.warn(
            &format!("{base}.allowNullOrigin"),
            "null-origin",
            "true lets any sandboxed iframe, local file or redirected request read responses: every page can make its requests carry `Origin: null`".to_owned(),
        );
    }

    let any_origin = eff
        .allow_origins
        .is_some_and(|o| o.iter().any(|e| e == "*"));
    let credentials = eff.allow_credentials == Some(true);
    let wrote_either = !is_route || own.allow_origins.is_some() || own.allow_credentials.is_some();
    if any_origin && credentials && wrote_either {
        let path = match eff
            .allow_origins
            .and_then(|o| o.iter().position(|e| e == "*"))
        {
            Some(i) if own.allow_origins.is_some() || !is_route => {
                format!("{base}.allowOrigins[{i}]")
            }
            _ => format!("{base}.allowCredentials"),
        };
        out.error(
            &path,
            "wildcard-origin-with-credentials",
            "\"*\" together with allowCredentials: true is refused: browsers never accept `*` on a credentialed response, and echoing every origin would let any site read responses with the user's cookies; list the origins".to_owned(),
        );
    }

    let expose_any = eff
        .expose_headers
        .is_some_and(|e| e.iter().any(|h| h == "*"));
    let wrote_expose = !is_route || own.expose_headers.is_some() || own.allow_credentials.is_some();
    if expose_any && credentials && wrote_expose {
        out.warn(
            &format!("{base}.exposeHeaders"),
            "expose-wildcard-with-credentials",
            "\"*\" with allowCredentials: true exposes only a header literally named `*`: browsers do not treat it as a wildcard on credentialed responses; list the header names".to_owned(),
        );
    }

    let empty = |v: Option<&Vec<String>>| v.is_none_or(|v| v.is_empty());
    let no_origins = empty(eff.allow_origins)
        && empty(eff.allow_origin_regexes)
        && eff.allow_null_origin != Some(true);
    if no_origins && (is_route || !has_routes) {
        out.error(
            &format!("{base}.allowOrigins"),
            "no-origins",
            "allowOrigins and allowOriginRegexes are both empty: the rules would allow no origin at all".to_owned(),
        );
    }

    if let Some(origins) = own.allow_origins {
        lint_mixed_schemes(out, base, origins);
    }
}

fn check_origins(out: &mut Findings, base: &str, origins: &[String]) {
    for (i, entry) in origins.iter().enumerate() {
        let path = format!("{base}.allowOrigins[{i}]");
        match parse_config_origin(entry) {
            Err(why) => out.error(&path, "invalid-origin", format!("{entry:?} {why}")),
            Ok(OriginPattern::Wildcard { scheme, suffix, .. }) => {
                // Before the public-suffix check: psl's default rule makes any unknown last
                // label, a number included, a public suffix.
                if is_special(&scheme) && ends_in_number(&suffix) {
                    out.warn(
                        &path,
                        "wildcard-over-address",
                        format!("{entry:?} matches no host name: browsers read a host that ends in a number as an IPv4 address, so `*` here stands for the first bytes of addresses ending in .{suffix}; list the origins"),
                    );
                } else if psl::suffix_str(&suffix) == Some(suffix.as_str())
                    && !is_special_use(&suffix)
                {
                    out.warn(
                        &path,
                        "public-suffix-wildcard",
                        format!("{entry:?} covers every site registered under the public suffix {suffix:?}, which belong to anyone"),
                    );
                } else if let Some(domain) = hosting_domain_under(&suffix) {
                    out.warn(
                        &path,
                        "third-party-hosting",
                        format!("{entry:?} covers {domain}, where anyone can publish a site: list your own hosts"),
                    );
                }
            }
            Ok(OriginPattern::Exact) => lint_address_spelling(out, &path, entry),
            Ok(OriginPattern::Any) => {}
        }
    }
}

/// An exact entry whose host is an IP address spelled otherwise than browsers send it
/// (`http://127.1`, `http://[0:0::1]`), or no address at all (`http://10.0.0.256`), matches
/// no request. A lint, not an error: the policy's other entries still work.
fn lint_address_spelling(out: &mut Findings, path: &str, entry: &str) {
    let Some((scheme, rest)) = entry.split_once("://") else {
        return;
    };
    let (host, port) = split_host_port(rest);
    match browser_host(scheme, host) {
        HostSpelling::AsWritten => {}
        HostSpelling::Browsers(host) => {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            out.warn(
                path,
                "origin-never-matches",
                format!("{entry:?} never matches: browsers send this address as \"{scheme}://{host}{port}\", so write it that way"),
            );
        }
        HostSpelling::Never(why) => out.warn(
            path,
            "origin-never-matches",
            format!("{entry:?} never matches: {why}, so no browser can send it"),
        ),
    }
}

/// Special-use domain names that no one can register, so a wildcard over them covers only the
/// user's own machine or network: `localhost`, `test`, `example` and `invalid` (RFC 6761),
/// `local` (mDNS, RFC 6762), `home.arpa` (RFC 8375) and `internal` (reserved by ICANN for
/// private use, 2024). Not `onion` (RFC 7686) nor `alt` (RFC 9476): names there are
/// self-assigned by anyone, so a wildcard over them does cover other people's sites.
pub const SPECIAL_USE_DOMAINS: &[&str] = &[
    "localhost",
    "test",
    "example",
    "invalid",
    "local",
    "home.arpa",
    "internal",
];

/// `suffix` is one of [`SPECIAL_USE_DOMAINS`] or a name under one.
fn is_special_use(suffix: &str) -> bool {
    SPECIAL_USE_DOMAINS.iter().any(|name| {
        suffix == *name
            || suffix
                .strip_suffix(name)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

fn lint_mixed_schemes(out: &mut Findings, base: &str, origins: &[String]) {
    let has_https = origins.iter().any(|o| o.starts_with("https://"));
    if !has_https {
        return;
    }
    for (i, entry) in origins.iter().enumerate() {
        // Loopback origins are potentially trustworthy: no network path to inject into.
        // Browsers resolve every name under `localhost` to loopback too (Secure Contexts).
        let loopback = entry.strip_prefix("http://").is_some_and(|rest| {
            let (host, _) = split_host_port(rest);
            host == "localhost"
                || host.ends_with(".localhost")
                || host == "[::1]"
                || host.starts_with("127.")
        });
        if entry.starts_with("http://") && !loopback {
            out.warn(
                &format!("{base}.allowOrigins[{i}]"),
                "mixed-scheme",
                format!("{entry:?} is plain http beside https origins: anyone on the network path can inject script into it and read the responses meant for the https pages"),
            );
        }
    }
}

/// A regex error on one line: `regex` writes a syntax error over three, the pattern with a caret
/// under the fault, which would break every one-finding-per-line output.
pub fn regex_error_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let Some(message) = text.lines().find_map(|l| l.strip_prefix("error: ")) else {
        return text.split_whitespace().collect::<Vec<_>>().join(" ");
    };
    // The caret line comes right before the `error:` line; it and the pattern above it are
    // indented by four spaces. (The pattern itself may start with `^`.)
    let lines: Vec<&str> = text.lines().collect();
    let column = lines
        .iter()
        .position(|l| l.starts_with("error: "))
        .and_then(|at| at.checked_sub(1))
        .and_then(|at| lines.get(at))
        .filter(|l| l.trim().starts_with('^') && l.trim().chars().all(|c| matches!(c, '^' | '-')))
        .and_then(|l| l.find('^'))
        .map(|i| i.saturating_sub(4) + 1);
    match column {
        Some(column) => format!("{message} (at character {column})"),
        None => message.to_owned(),
    }
}

fn check_regexes(out: &mut Findings, base: &str, regexes: &[String]) {
    for (i, src) in regexes.iter().enumerate() {
        let path = format!("{base}.allowOriginRegexes[{i}]");
        // Checked on its own first: only a regex that is whole by itself stays inside the
        // `^(?:…)$` group that anchors it (`a)|(.*` would otherwise match everything).
        let compiled =
            regex::Regex::new(src).and_then(|_| regex::Regex::new(&format!("^(?:{src})$")));
        if let Err(e) = compiled {
            out.error(
                &path,
                "invalid-regex",
                format!("{src:?} is not a valid regex: {}", regex_error_line(&e)),
            );
            continue;
        }
        let anchored = regex::Regex::new(&format!("^(?:{src})$"));
        if let Some(domain) = anchored.ok().and_then(|re| {
            THIRD_PARTY_HOSTING
                .iter()
                .find(|d| re.is_match(&format!("https://probe.{d}")))
        }) {
            out.warn(
                &path,
                "third-party-hosting",
                format!("{src:?} matches sites on {domain}, where anyone can publish a site: match your own hosts"),
            );
        }
        if has_open_end(src) {
            out.warn(
                &path,
                "regex-open-end",
                format!("{src:?} ends in a pattern that matches anything: it also matches hosts that merely start with yours (`app.example.com.evil.test`, `app.example.com_.evil.test`); end it with the host or `(:[0-9]+)?`"),
            );
        }
        if has_unescaped_host_dot(src) {
            out.warn(
                &path,
                "regex-unescaped-dot",
                format!("{src:?} has an unescaped `.` in the host: it matches any character, so look-alike hosts match too; write `\\.`"),
            );
        }
    }
}

/// Hosting services where anyone can publish a site under a subdomain of these names. Several
/// are on the Public Suffix List (caught as `public-suffix-wildcard`); this list also catches a
/// wildcard over a parent domain (`*.amazonaws.com`) and regexes.
const THIRD_PARTY_HOSTING: &[&str] = &[
    "github.io",
    "githubusercontent.com",
    "gitlab.io",
    "bitbucket.io",
    "pages.dev",
    "workers.dev",
    "vercel.app",
    "netlify.app",
    "herokuapp.com",
    "onrender.com",
    "fly.dev",
    "web.app",
    "firebaseapp.com",
    "appspot.com",
    "azurewebsites.net",
    "azurestaticapps.net",
    "cloudfront.net",
    "s3.amazonaws.com",
    "amazonaws.com",
    "blob.core.windows.net",
    "ngrok.io",
    "ngrok-free.app",
    "glitch.me",
    "surge.sh",
    "codepen.io",
    "jsfiddle.net",
];

/// The hosting domain that a wildcard over `suffix` covers: `suffix` is one, or a parent of one.
fn hosting_domain_under(suffix: &str) -> Option<&'static str> {
    THIRD_PARTY_HOSTING.iter().copied().find(|d| {
        *d == suffix
            || d.strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// The regex ends (before an optional `$`) in an unescaped `.*` or `.+`.
fn has_open_end(src: &str) -> bool {
    let src = src.strip_suffix('$').unwrap_or(src);
    let Some(rest) = src.strip_suffix(".*").or_else(|| src.strip_suffix(".+")) else {
        return false;
    };
    // An odd number of backslashes before the dot escapes it.
    rest.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 0
}

/// A `.` outside a character class, not escaped, and followed by a host character: the author
/// meant a literal dot between labels (`app.example.com`), not "any character" (`.*`, `.+`).
fn has_unescaped_host_dot(src: &str) -> bool {
    let host_part = src.split_once("://").map_or(src, |(_, rest)| rest);
    let bytes = host_part.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'.' if !in_class && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric()) => {
                return true;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

fn check_tokens(out: &mut Findings, path: &str, items: &[String], code: &'static str, what: &str) {
    for (i, item) in items.iter().enumerate() {
        if item != "*" && !is_token(item) {
            let why = if item.is_empty() {
                "is empty"
            } else {
                "is not a token (letters, digits and !#$%&'*+-.^_`|~ only)"
            };
            out.error(
                &format!("{path}[{i}]"),
                code,
                format!("{item:?} is not a valid {what}: it {why}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
