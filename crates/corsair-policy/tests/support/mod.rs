//! Helpers shared by the integration tests: build a policy from YAML, run one request through
//! the engine, and render the outcome as plain data that a table row can state.

#![allow(dead_code)]

use corsair_policy::{Action, Decision, Engine, RequestInfo, load_document};

/// Compiles the spec written as YAML (the body under `spec:`), panicking with the report if the
/// policy is refused: a test policy that does not compile is a broken test.
pub fn engine(spec_yaml: &str) -> Engine {
    let manifest = format!(
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata:\n  name: t\nspec:\n{}",
        indent(spec_yaml)
    );
    let doc = match load_document(&manifest) {
        Ok(doc) => doc,
        Err(e) => panic!("test policy does not load: {e}\n{manifest}"),
    };
    match Engine::compile(&doc.spec) {
        Ok((engine, _)) => engine,
        Err(report) => panic!("test policy refused: {:?}", report.findings),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// One request, written the way a browser would send it.
#[derive(Debug, Clone, Default)]
pub struct Req {
    pub method: &'static str,
    pub path: &'static str,
    pub host: Option<&'static str>,
    pub origin: Option<&'static str>,
    pub acrm: Option<&'static str>,
    pub acrh: Vec<&'static str>,
    pub pna: bool,
}

/// A cross-origin `GET /` from `origin` to host `api.test`.
pub fn get(origin: &'static str) -> Req {
    Req {
        method: "GET",
        path: "/",
        host: Some("api.test"),
        origin: Some(origin),
        ..Req::default()
    }
}

/// A preflight from `origin` asking for `method` and the header lines `headers`.
pub fn preflight(origin: &'static str, method: &'static str, headers: &[&'static str]) -> Req {
    Req {
        method: "OPTIONS",
        path: "/",
        host: Some("api.test"),
        origin: Some(origin),
        acrm: Some(method),
        acrh: headers.to_vec(),
        pna: false,
    }
}

impl Req {
    pub fn path(mut self, path: &'static str) -> Self {
        self.path = path;
        self
    }
    pub fn host(mut self, host: &'static str) -> Self {
        self.host = Some(host);
        self
    }
    pub fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    pub fn no_origin(mut self) -> Self {
        self.origin = None;
        self
    }
    pub fn private_network(mut self) -> Self {
        self.pna = true;
        self
    }
}

/// What the proxy does, without the borrowed details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Answered by the proxy with this status.
    Respond(u16),
    /// Forwarded; `strip` says whether the upstream's `Access-Control-*` headers are removed.
    Forward { strip: bool },
}

/// The outcome of one request: what happens and the exact headers the proxy sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub out: Out,
    /// Lowercase name and value, in the order `for_each` gives them.
    pub headers: Vec<(String, String)>,
}

/// Runs `req` through `engine` and calls `f` with the decision.
pub fn with_decision<T>(engine: &Engine, req: &Req, f: impl FnOnce(&Decision<'_>) -> T) -> T {
    let info = RequestInfo {
        method: req.method,
        path: req.path,
        host: req.host,
        origin: req.origin,
        request_method: req.acrm,
        request_headers: &req.acrh,
        request_private_network: req.pna,
    };
    let decision = engine.decide(&info);
    f(&decision)
}

/// Renders an action as plain data.
pub fn outcome(action: Action<'_>) -> Outcome {
    let (out, headers) = match action {
        Action::Respond { status, headers } => (Out::Respond(status), headers),
        Action::Forward {
            headers,
            strip_upstream_cors,
        } => (
            Out::Forward {
                strip: strip_upstream_cors,
            },
            headers,
        ),
    };
    let mut list = Vec::new();
    headers.for_each(|name, value| list.push((name.to_owned(), value.to_string())));
    Outcome { out, headers: list }
}

/// The outcome of `req` with the mode applied (what the proxy does now).
pub fn run(engine: &Engine, req: &Req) -> Outcome {
    with_decision(engine, req, |d| outcome(d.action()))
}

/// Builds the expected header list from `("name", "value")` pairs.
pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// The value of one header in an outcome.
pub fn header<'o>(outcome: &'o Outcome, name: &str) -> Option<&'o str> {
    outcome
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
