//! `corsair explain`: what the proxy would answer for one request, and why.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use corsair_policy::{
    Action, AllowReason, Decision, DenyReason, Engine, Mode, RequestInfo, RequestKind,
    ResponseHeaders, Verdict, load_document,
};

/// Show what the proxy would answer for a request, and why.
#[derive(clap::Args)]
pub struct Args {
    /// Policy file: a CorsPolicy manifest (YAML) or a rendered policy (JSON).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The request's `Origin` header, e.g. `https://app.example.com` or `null`.
    #[arg(long, value_name = "ORIGIN")]
    origin: String,
    /// The method of the request (for a preflight: the method it asks for).
    #[arg(long, default_value = "GET", value_name = "METHOD")]
    method: String,
    /// A request header (for a preflight: a header it asks for). Repeatable.
    #[arg(long = "header", value_name = "NAME")]
    headers: Vec<String>,
    /// Explain the preflight (`OPTIONS`) the browser sends before the request.
    #[arg(long)]
    preflight: bool,
    /// The request path; selects the route.
    #[arg(long, default_value = "/", value_name = "PATH")]
    path: String,
    /// The `Host` header, to see same-origin handling.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// The preflight carries `Access-Control-Request-Private-Network: true`.
    #[arg(long, requires = "preflight")]
    private_network: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read {}", args.policy.display()))?;
    let doc = load_document(&text).with_context(|| format!("{}", args.policy.display()))?;
    let engine = match Engine::compile(&doc.spec) {
        Ok((engine, _)) => engine,
        Err(report) => {
            for finding in report.errors() {
                eprintln!("{}: error: {finding}", args.policy.display());
            }
            anyhow::bail!("{} is not a valid policy", args.policy.display());
        }
    };
    let joined = args.headers.join(", ");
    let header_lines: Vec<&str> = if joined.is_empty() {
        vec![]
    } else {
        vec![joined.as_str()]
    };
    let req = if args.preflight {
        RequestInfo {
            method: "OPTIONS",
            path: &args.path,
            host: args.host.as_deref(),
            origin: Some(&args.origin),
            request_method: Some(&args.method),
            request_headers: &header_lines,
            request_private_network: args.private_network,
        }
    } else {
        RequestInfo {
            method: &args.method,
            path: &args.path,
            host: args.host.as_deref(),
            origin: Some(&args.origin),
            ..RequestInfo::default()
        }
    };
    let decision = engine.decide(&req);
    print!("{}", render(&req, &args.headers, &decision));
    Ok(ExitCode::SUCCESS)
}

/// The human-readable explanation.
fn render(req: &RequestInfo<'_>, headers: &[String], decision: &Decision<'_>) -> String {
    let mut out = String::new();
    let kind = match decision.kind {
        RequestKind::NotCors => "not a CORS request (no Origin)",
        RequestKind::SameOrigin => "same-origin request (Origin matches Host)",
        RequestKind::Preflight => "CORS preflight",
        RequestKind::Actual => "cross-origin request",
    };
    let _ = writeln!(out, "request:  {} {} — {kind}", req.method, req.path);
    if let Some(origin) = req.origin {
        let _ = writeln!(out, "          origin: {origin}");
    }
    if let Some(method) = req.request_method {
        let _ = writeln!(out, "          access-control-request-method: {method}");
    }
    if !headers.is_empty() {
        let name = if req.request_method.is_some() {
            "access-control-request-headers"
        } else {
            "headers"
        };
        let _ = writeln!(out, "          {name}: {}", headers.join(", "));
    }
    let route = match decision.route {
        Some(prefix) => format!("route with pathPrefix {prefix:?}"),
        None => "top-level rules (no route matched)".to_string(),
    };
    let _ = writeln!(out, "rules:    {route}, mode {:?}", decision.mode);
    let verdict = match decision.verdict {
        Verdict::NotApplicable => "nothing to check".to_string(),
        Verdict::Allowed(reason) => format!("ALLOWED: {}", allow_reason(reason)),
        Verdict::Denied(reason) => format!("DENIED: {}", deny_reason(reason)),
    };
    let _ = writeln!(out, "verdict:  {verdict}");
    match decision.mode {
        Mode::Enforce => render_action(&mut out, &decision.enforced),
        Mode::DryRun => {
            let _ = writeln!(
                out,
                "action:   DryRun: forwarded to the upstream unchanged; in Enforce mode it would:"
            );
            render_action(&mut out, &decision.enforced);
        }
        Mode::Disabled => {
            let _ = writeln!(
                out,
                "action:   Disabled: forwarded to the upstream unchanged, response untouched"
            );
        }
    }
    out
}

fn render_action(out: &mut String, action: &Action<'_>) {
    match action {
        Action::Respond { status, headers } => {
            let _ = writeln!(
                out,
                "answer:   {status} from the proxy; the upstream is not called"
            );
            render_headers(out, headers);
        }
        Action::Forward {
            headers,
            strip_upstream_cors,
        } => {
            let _ = writeln!(out, "answer:   forwarded to the upstream");
            if *strip_upstream_cors {
                let _ = writeln!(
                    out,
                    "          the upstream's own Access-Control-* headers are removed"
                );
            } else {
                let _ = writeln!(
                    out,
                    "          the upstream's response headers are kept as they are"
                );
            }
            render_headers(out, headers);
        }
    }
}

fn render_headers(out: &mut String, headers: &ResponseHeaders<'_>) {
    let mut lines = Vec::new();
    headers.for_each(|name, value| lines.push(format!("  {name}: {value}")));
    if lines.is_empty() {
        let _ = writeln!(out, "headers:  (no CORS headers)");
    } else {
        let _ = writeln!(out, "headers:");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
}

fn allow_reason(reason: AllowReason<'_>) -> String {
    match reason {
        AllowReason::AnyOrigin => "allowOrigins contains \"*\"".to_string(),
        AllowReason::Exact(o) => format!("origin is listed in allowOrigins ({o:?})"),
        AllowReason::Wildcard(w) => format!("origin matches the allowOrigins wildcard {w:?}"),
        AllowReason::Regex(r) => format!("origin matches allowOriginRegexes entry {r:?}"),
        AllowReason::NullOrigin => "origin is \"null\" and allowNullOrigin is true".to_string(),
    }
}

fn deny_reason(reason: DenyReason<'_>) -> String {
    match reason {
        DenyReason::OriginNotAllowed => {
            "the origin matches no allowOrigins or allowOriginRegexes entry".to_string()
        }
        DenyReason::MalformedOrigin => "the Origin header is not a valid origin".to_string(),
        DenyReason::MethodNotAllowed(m) => format!("method {m:?} is not in allowMethods"),
        DenyReason::HeaderNotAllowed(h) => format!("header {h:?} is not in allowHeaders"),
        DenyReason::AuthorizationNotCoveredByWildcard => {
            "\"authorization\" was requested: \"*\" in allowHeaders never covers it, list it by name"
                .to_string()
        }
        DenyReason::PrivateNetworkNotAllowed => {
            "private network access was requested and allowPrivateNetwork is false".to_string()
        }
    }
}
