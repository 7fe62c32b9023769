//! The slim `corsair-proxy` binary: what it links, and that it runs as the sidecar.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use corsair_runtime::testing::http_get;

/// Crates the sidecar must never link: the Kubernetes client and API types, certificate
/// generation, and the operator.
const FORBIDDEN: &[&str] = &["k8s-openapi", "rcgen", "corsair-controller"];

/// The packages `corsair-proxy` (with its default features, as the image builds it) depends on
/// to build and run, as `cargo tree` resolves them for this machine.
fn dependencies() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--package", "corsair-proxy"])
        .args([
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn links_neither_kube_nor_certificates_nor_the_controller() {
    let deps = dependencies();
    // The graph is the real one: it holds what the proxy is made of.
    for expected in [
        "corsair-proxy",
        "corsair-policy",
        "corsair-runtime",
        "hyper",
        "clap",
    ] {
        assert!(deps.contains(expected), "{expected} missing from {deps:?}");
    }
    let linked: Vec<&String> = deps
        .iter()
        .filter(|name| name.starts_with("kube") || FORBIDDEN.contains(&name.as_str()))
        .collect();
    assert!(linked.is_empty(), "corsair-proxy depends on {linked:?}");
}

const POLICY: &str = "\
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata:
  name: api
spec:
  allowOrigins: [\"https://app.example.com\"]
";

/// An upstream that answers every request with `hello` and its own permissive CORS header.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        let _ = reader.get_mut().write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\
                              Access-Control-Allow-Origin: *\r\n\r\nhello",
                        );
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `corsair-proxy` with `shutdown_delay`, and its proxy and admin addresses.
struct Running {
    child: Killed,
    listen: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start(shutdown_delay: &str) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let upstream = upstream();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_corsair-proxy"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .env("CORSAIR_POLICY", &policy)
            .env("CORSAIR_UPSTREAM", format!("http://{upstream}"))
            .env("CORSAIR_SHUTDOWN_DELAY", shutdown_delay)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corsair-proxy"),
    );
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a start-up log line within 20 s");
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if json["message"] == "proxy started" {
            break json;
        }
    };
    let addr = |field: &str| -> SocketAddr {
        started[field]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{field} in {started}"))
    };
    Running {
        listen: addr("listen"),
        admin: addr("admin"),
        child,
        _dir: dir,
    }
}

fn sigterm(child: &Killed) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("the `kill` command (procps)");
    assert!(killed.success());
}

/// Waits for `/readyz` to say 503, as it does from the signal on.
fn wait_not_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !http_get(admin, "/readyz", "").starts_with("HTTP/1.1 503") {
        assert!(Instant::now() < deadline, "still ready 2 s after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Its exit status, within `limit`.
fn exit_within(child: &mut Killed, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The binary as the webhook injects it into a regular container: it enforces the policy, and
/// on SIGTERM it keeps serving (not ready) for `CORSAIR_SHUTDOWN_DELAY`, then drains and exits 0.
#[test]
fn enforces_a_policy_and_drains_on_sigterm() {
    let mut running = start("5");

    let response = http_get(running.listen, "/", "Origin: https://evil.example.net\r\n");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        !response
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "the upstream's `*` is stripped for an origin the policy does not allow: {response}"
    );
    let ready = http_get(running.admin, "/readyz", "");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // Before the signal can arrive, so that the delay cannot look shorter than it was.
    let signalled = Instant::now();
    sigterm(&running.child);
    wait_not_ready(running.admin);
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "too slow to tell: not ready only {:?} after the signal",
        signalled.elapsed()
    );
    // A new connection while not ready: still accepted and served.
    let response = http_get(running.listen, "/", "Origin: https://evil.example.net\r\n");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "served in the shutdown delay: {response}"
    );
    let status = exit_within(&mut running.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(5),
        "exited before the shutdown delay: {:?}",
        signalled.elapsed()
    );
}

/// A second SIGTERM (or Ctrl-C) cuts the shutdown delay short: the drain starts at once.
#[test]
fn a_second_signal_cuts_the_shutdown_delay_short() {
    let mut running = start("60");
    sigterm(&running.child);
    wait_not_ready(running.admin);
    sigterm(&running.child);
    let status = exit_within(&mut running.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
}

/// a start error is printed as "error: <error>: <cause>: …", each part once. The
/// errors whose message already holds their source (`{source}` in the format, and the same
/// value as `#[source]`) have it printed twice by main.rs's chain walk: the message a user
/// sees for the commonest start failure, a policy that does not parse.
#[test]
fn a_start_error_names_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "spec: [unclosed").expect("write");
    let not_a_file = dir.path().join("policy.d");
    std::fs::create_dir(&not_a_file).expect("mkdir");
    let mut repeated = Vec::new();
    for (policy, cause) in [
        (&bad, "expected mapping start"),
        (&not_a_file, "Is a directory"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_corsair-proxy"))
            .arg("--policy")
            .arg(policy)
            .args(["--upstream", "http://127.0.0.1:9"])
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(stderr.contains(cause), "{stderr}");
        if stderr.matches(cause).count() != 1 {
            repeated.push(stderr.trim().to_owned());
        }
    }
    assert!(repeated.is_empty(), "cause printed twice: {repeated:#?}");
}
