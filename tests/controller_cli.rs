//! `corsair controller` outside a cluster: bad flags and a missing API server end the process
//! at once with an error that says what is wrong, never a panic or a hang.

use std::process::{Command, Output};
use std::time::Duration;

fn controller(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corsair"));
    command
        .arg("controller")
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", "/nonexistent");
    for (k, v) in envs {
        command.env(k, v);
    }
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting corsair controller");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("corsair controller exits on its own")
        .expect("collecting its output")
}

#[test]
fn no_kubeconfig_is_a_clear_error() {
    let out = controller(
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--webhook-listen",
            "127.0.0.1:0",
        ],
        &[("KUBECONFIG", "/nonexistent/kubeconfig")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot configure the Kubernetes client"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn clashing_sidecar_ports_are_refused_before_anything_starts() {
    let stderr = exits_2(&[
        "--sidecar-proxy-port",
        "9000",
        "--sidecar-admin-port",
        "9000",
    ]);
    assert!(
        stderr.contains("--sidecar-proxy-port and --sidecar-admin-port are both 9000"),
        "{stderr}"
    );
}

/// A sidecar log filter the proxy cannot parse would stop every injected proxy at start.
#[test]
fn a_sidecar_log_filter_the_proxy_cannot_parse_is_refused_before_anything_starts() {
    let stderr = exits_2(&["--sidecar-log-level", "info,foo=bar"]);
    assert!(
        stderr.contains("--sidecar-log-level") && stderr.contains("info,foo=bar"),
        "{stderr}"
    );
    let stderr = exits_2(&["--sidecar-log-level", "info,corsair_proxy=debug"]);
    assert!(
        stderr.contains("cannot configure the Kubernetes client"),
        "{stderr}"
    );
}

/// Standard error of `corsair controller ARGS` without a cluster, which must exit with 2.
fn exits_2(args: &[&str]) -> String {
    let out = controller(args, &[("KUBECONFIG", "/nonexistent/kubeconfig")]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// A sidecar default the API server would refuse in every pod (`128MB`), or one the webhook
/// would (a request above its limit), stops the controller at start, naming the flags.
#[test]
fn bad_sidecar_resources_are_refused_before_anything_starts() {
    let stderr = exits_2(&["--sidecar-memory-limit", "128MB"]);
    assert!(
        stderr.contains("'128MB' for '--sidecar-memory-limit")
            && stderr.contains("not a Kubernetes quantity"),
        "{stderr}"
    );
    let stderr = exits_2(&["--sidecar-cpu-request", "1", "--sidecar-cpu-limit", "500m"]);
    assert!(
        stderr.contains("--sidecar-cpu-request 1 is above --sidecar-cpu-limit 500m"),
        "{stderr}"
    );
    // No pod can have a container port 0.
    let stderr = exits_2(&["--sidecar-proxy-port", "0"]);
    assert!(stderr.contains("'0' for '--sidecar-proxy-port"), "{stderr}");
    // 0 is a limit of zero, not none, and the message says how to leave it out.
    let stderr = exits_2(&["--sidecar-cpu-limit", "0"]);
    assert!(
        stderr.contains("--sidecar-cpu-request 50m is above --sidecar-cpu-limit 0")
            && stderr.contains("an empty value, not 0, leaves a limit out"),
        "{stderr}"
    );
    // Without a limit there is nothing to be above: the controller goes on to look for its
    // cluster.
    let stderr = exits_2(&["--sidecar-cpu-request", "1", "--sidecar-cpu-limit="]);
    assert!(
        stderr.contains("cannot configure the Kubernetes client") && !stderr.contains("above"),
        "{stderr}"
    );
}

#[test]
fn unknown_sidecar_mode_names_the_choices() {
    let out = controller(&["--sidecar-mode", "sometimes"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sometimes") && stderr.contains("auto, native, container"),
        "{stderr}"
    );
}

#[test]
fn tls_cert_needs_tls_key() {
    let out = controller(&["--tls-cert", "/tmp/x.crt"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// A start error names its cause once: the certificate error carries the I/O error in its
/// message, and is not also its `source()`, which the error chain would print again.
#[test]
fn a_missing_certificate_file_is_named_with_its_cause_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["webhook", "--listen", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .output()
        .expect("runs corsair webhook");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/tls.crt"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
