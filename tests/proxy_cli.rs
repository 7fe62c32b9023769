//! Black-box tests of `corsair proxy`: the real binary, a real upstream, real signals.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use corsair_runtime::testing::http_get;

mod harness;
use harness::ProxyProcess;

const POLICY: &str = "\
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata:
  name: api
  generation: 3
spec:
  allowOrigins: [\"https://app.example.com\"]
";

/// A tiny HTTP/1.1 upstream on its own thread: `/slow` answers after 1.5 s, anything else at
/// once. Each request path is sent on the returned channel as it arrives.
fn upstream() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            thread::spawn(move || serve(stream, &tx));
        }
    });
    (addr, rx)
}

fn serve(stream: TcpStream, tx: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let _ = tx.send(path.clone());
        let body = if path == "/slow" {
            thread::sleep(Duration::from_millis(1500));
            "slow"
        } else {
            "hello"
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Starts the binary with its policy and upstream given in the environment, as a Pod spec may
/// set them.
fn start(policy: &Path, upstream: SocketAddr) -> ProxyProcess {
    ProxyProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_corsair"))
            .arg("proxy")
            .env("CORSAIR_POLICY", policy)
            .env("CORSAIR_UPSTREAM", format!("http://{upstream}")),
    )
}

#[test]
fn starts_with_a_valid_policy_and_enforces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let (upstream, _seen) = upstream();
    let mut proxy = start(&policy, upstream);

    let allowed = http_get(proxy.listen, "/", "Origin: https://app.example.com\r\n");
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(
        allowed
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.com\r\n"),
        "{allowed}"
    );
    let denied = http_get(proxy.listen, "/", "Origin: https://evil.example.net\r\n");
    assert!(denied.starts_with("HTTP/1.1 200"), "{denied}");
    assert!(
        !denied
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "the upstream's own `*` was stripped: {denied}"
    );
    assert!(http_get(proxy.admin, "/readyz", "").starts_with("HTTP/1.1 200"));
    let metrics = http_get(proxy.admin, "/metrics", "");
    assert!(
        metrics.contains("corsair_proxy_policy_generation 3"),
        "{metrics}"
    );

    proxy.sigterm();
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exited within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");

    // One info line for the denied request, none for the allowed one (that is debug).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (logs, info) = loop {
        let logs = proxy.logs.lock().expect("logs").clone();
        let info: Vec<serde_json::Value> = logs
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|json| json["level"] == "INFO" && json.get("origin").is_some())
            .collect();
        // The last line is the one about the drain: once it is read, everything before is too.
        if logs.iter().any(|l| l.contains("proxy stopped")) || Instant::now() > deadline {
            break (logs, info);
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(info.len(), 1, "{logs:#?}");
    assert_eq!(info[0]["message"], "CORS request denied");
    assert_eq!(info[0]["origin"], "https://evil.example.net");
    assert_eq!(info[0]["reason"], "origin not allowed");
}

#[test]
fn refuses_to_start_with_an_invalid_policy_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        POLICY.replace("https://app.example.com", "https://app.example.com/path"),
    )
    .expect("write policy");
    let output = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["proxy", "--upstream", "http://127.0.0.1:1"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("run corsair proxy");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("spec.allowOrigins[0]"), "{stderr}");
    assert!(stderr.contains(&policy.display().to_string()), "{stderr}");
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let (upstream, seen) = upstream();
    let mut proxy = start(&policy, upstream);

    let listen = proxy.listen;
    let slow = thread::spawn(move || http_get(listen, "/slow", ""));
    let path = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow request reached the upstream");
    assert_eq!(path, "/slow");
    proxy.sigterm();

    let response = slow.join().expect("client thread");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow"), "{response}");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exited within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Read system calls the process has made so far (`syscr` of `/proc/PID/io`).
fn read_syscalls(proxy: &ProxyProcess) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", proxy.pid())).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscr in /proc/PID/io: {io}"))
}

/// The file watcher must not react to the proxy's own reads of the policy: that once made an
/// idle proxy re-read its policy thousands of times a second. Idle, only the 1-second poll reads it.
#[test]
fn an_idle_proxy_does_not_keep_rereading_its_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let (upstream, _requests) = upstream();
    let proxy = start(&policy, upstream);
    thread::sleep(Duration::from_millis(500));
    let before = read_syscalls(&proxy);
    thread::sleep(Duration::from_secs(3));
    let reads = read_syscalls(&proxy) - before;
    assert!(
        reads < 100,
        "an idle proxy made {reads} read system calls in 3 s: it keeps re-reading its policy"
    );
}

/// The options section of a `--help` page (what follows `Options:`).
fn options(help: &str) -> &str {
    help.split_once("Options:\n")
        .map(|(_, options)| options)
        .unwrap_or_else(|| panic!("no Options: section in {help}"))
}

/// `corsair-proxy`, the slim binary, and `corsair proxy` share one definition of their flags:
/// their `--help` pages list the same options, with the same help, variables and defaults.
#[test]
fn the_slim_binary_lists_the_same_flags_as_corsair_proxy() {
    let corsair = Path::new(env!("CARGO_BIN_EXE_corsair"));
    let slim = corsair.with_file_name(format!("corsair-proxy{}", std::env::consts::EXE_SUFFIX));
    assert!(
        slim.exists(),
        "{} is missing: it is built by `cargo test --workspace` (make test), or by \
         `cargo build -p corsair-proxy`",
        slim.display()
    );
    let help = |command: &mut Command| {
        let output = command.arg("--help").output().expect("runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("UTF-8 help")
    };
    let full = help(Command::new(corsair).arg("proxy"));
    let slim = help(&mut Command::new(&slim));
    assert!(
        slim.contains("Usage: corsair-proxy [OPTIONS] --policy <FILE> --upstream <URL>"),
        "{slim}"
    );
    for flag in [
        "--policy <FILE>",
        "[env: CORSAIR_UPSTREAM=]",
        "--log-format",
        "--version",
    ] {
        assert!(options(&full).contains(flag), "{flag} in {full}");
    }
    assert_eq!(options(&full), options(&slim));
}
