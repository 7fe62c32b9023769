//! Every metric the Grafana dashboard (deploy/grafana/corsair.json) queries is one the binaries
//! export: the proxy's names are scraped from a running `corsair proxy`'s admin `/metrics`, the
//! controller's and the webhooks' from the registry `corsair controller` serves.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prometheus_client::registry::Registry;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sample names of an exposition: `counter` families end in `_total`, histograms have
/// `_bucket`, `_sum` and `_count`.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let Some((name, kind)) = rest.split_once(' ') else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// One request with an Origin through the proxy, to an upstream that refuses connections, so
/// the request and upstream-error families have samples.
fn one_request(listen: SocketAddr) {
    let mut stream = TcpStream::connect(listen).expect("proxy accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\nOrigin: https://a.test\r\nConnection: close\r\n\r\n")
        .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read answer");
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
}

fn scrape_proxy() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nspec:\n  allowOrigins: [https://a.test]\n",
    )
    .expect("write policy");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .arg("proxy")
        .arg("--policy")
        .arg(&policy)
        .args(["--upstream", "http://127.0.0.1:9"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corsair proxy");
    let stderr = child.stderr.take().expect("piped stderr");
    let child = Killed(child);
    let mut addrs = None;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.expect("stderr is UTF-8");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "proxy started" {
            let addr = |f: &str| json[f].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
            addrs = addr("listen").zip(addr("admin"));
            break;
        }
    }
    let (listen, admin) = addrs.expect("the proxy logs its addresses at start");
    // Keep draining stderr so the proxy never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    one_request(listen);
    let mut stream = TcpStream::connect(admin).expect("admin port accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    drop(child);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The registry `corsair controller` serves, with one sample in every family (a family without
/// samples is not in the exposition).
fn controller_exposition() -> String {
    use corsair_controller::webhook::{self, InjectConfig, Webhook, WebhookState};
    let mut registry = Registry::default();
    let controller = corsair_controller::metrics::Metrics::new(&mut registry);
    let webhook_metrics = webhook::Metrics::new(&mut registry);
    drop(controller.reconcile_started("corspolicy"));
    controller.reconcile_failed(
        "corspolicy",
        &corsair_controller::Error::MissingField {
            kind: "CorsPolicy",
            field: "metadata.namespace",
        },
    );
    controller.leader.set(1);
    let state = WebhookState::new(InjectConfig::default(), webhook_metrics);
    // Not AdmissionReviews: each webhook counts an error and observes its duration.
    for hook in [Webhook::Inject, Webhook::Validate] {
        assert!(webhook::review(&state, hook, b"{").is_err());
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

/// Metric names (not labels or functions) in the dashboard's queries.
fn dashboard_names() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/corsair.json");
    let text = std::fs::read_to_string(path).expect("deploy/grafana/corsair.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let mut names = BTreeSet::new();
    for expr in exprs {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(found) = expr[i..].find("corsair_") {
            let start = i + found;
            let end = expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| start + e);
            // Not part of a longer identifier.
            if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_')
            {
                names.insert(expr[start..end].to_owned());
            }
            i = end;
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let proxy = exported_names(&scrape_proxy());
    assert!(
        proxy.contains("corsair_proxy_requests_total"),
        "the scrape parsed: {proxy:?}"
    );
    let controller = exported_names(&controller_exposition());
    assert!(
        controller.contains("corsair_controller_reconcile_errors_total"),
        "{controller:?}"
    );
    let exported: BTreeSet<String> = proxy.union(&controller).cloned().collect();
    let queried = dashboard_names();
    assert!(queried.len() >= 8, "the dashboard queries {queried:?}");
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics no binary exports: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn the_name_parser_reads_types() {
    let names = exported_names(
        "# HELP a_x x.\n# TYPE a_x counter\n# TYPE a_h histogram\n# TYPE a_g gauge\na_x_total 1\n",
    );
    let want: BTreeSet<String> = ["a_x_total", "a_h_bucket", "a_h_sum", "a_h_count", "a_g"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, want);
}
