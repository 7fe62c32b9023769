use serde_json::json;

use super::*;

/// A pod from JSON, as the API server would send it.
fn mk_pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("test pod is a valid Pod")
}

/// The usual opted-in pod: one container with a port named `http` and a readiness probe on it.
fn web_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": {"corsair.dev/policy": "api"},
            "labels": {"corsair.dev/inject": "enabled"}
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "nginx",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": "http"}},
                "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": "http"}}}
            }]
        }
    })
}

fn run(pod: &Value, config: &InjectConfig) -> Result<Injection, InjectError> {
    inject(&mk_pod(pod.clone()), Some("shop"), config, None)
}

/// Asserts that one of `injection`'s warnings contains `needle`.
fn warns(injection: &Injection, needle: &str) {
    assert!(
        injection.warnings.iter().any(|w| w.contains(needle)),
        "no warning with {needle:?} in {:?}",
        injection.warnings
    );
}

/// Asserts that none of `injection`'s warnings contains `needle`.
fn does_not_warn(injection: &Injection, needle: &str) {
    assert!(
        injection.warnings.iter().all(|w| !w.contains(needle)),
        "a warning with {needle:?} in {:?}",
        injection.warnings
    );
}

/// Applies the injection's patch to `pod` and returns the result.
fn apply(pod: &Value, injection: &Injection) -> Value {
    let mut out = pod.clone();
    json_patch::patch(&mut out, &injection.patch)
        .expect("patch applies to the pod it was made for");
    out
}

fn sidecar_of(pod: &Value) -> Container {
    let pod = mk_pod(pod.clone());
    let spec = pod.spec.expect("spec");
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .find(|c| c.name == names::SIDECAR_NAME)
        .expect("sidecar present")
}

fn native() -> InjectConfig {
    InjectConfig {
        sidecar_mode: SidecarMode::Native,
        ..InjectConfig::default()
    }
}

fn container() -> InjectConfig {
    InjectConfig {
        sidecar_mode: SidecarMode::Container,
        ..InjectConfig::default()
    }
}

#[test]
fn takes_over_the_http_port_and_rewrites_probes() {
    let pod = web_pod();
    let injection = run(&pod, &native()).expect("injects");
    assert_eq!(injection.outcome, InjectOutcome::Injected);
    assert!(injection.warnings.is_empty(), "{:?}", injection.warnings);
    let out = apply(&pod, &injection);

    let app = &out["spec"]["containers"][0];
    assert_eq!(
        app["ports"][0],
        json!({"containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(app["readinessProbe"]["httpGet"]["port"], json!(8080));
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], json!(8080));
    assert_eq!(app["lifecycle"]["preStop"]["httpGet"]["port"], json!(8080));

    let sidecar = sidecar_of(&out);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let ports = sidecar.ports.expect("ports");
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].container_port, 15380);
    assert_eq!(ports[1].name.as_deref(), Some("corsair-admin"));
    assert_eq!(ports[1].container_port, 15381);
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&["corsair-proxy".to_owned()][..])
    );
    assert_eq!(
        sidecar.args.expect("args"),
        [
            "--policy",
            "/etc/corsair/policy.json",
            "--upstream",
            "http://localhost:8080",
            "--listen",
            "[::]:15380",
            "--admin",
            "[::]:15381",
            "--allow-missing-policy"
        ]
    );
    let readiness = sidecar
        .readiness_probe
        .expect("readiness")
        .http_get
        .expect("httpGet");
    assert_eq!(
        (readiness.path.as_deref(), &readiness.port),
        (Some("/readyz"), &IntOrString::Int(15381))
    );
    let liveness = sidecar
        .liveness_probe
        .expect("liveness")
        .http_get
        .expect("httpGet");
    assert_eq!(liveness.path.as_deref(), Some("/healthz"));

    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "corsair-policy", "configMap": {"name": "corsair-policy-api", "optional": true}}])
    );
    let mounts = sidecar.volume_mounts.expect("mounts");
    assert_eq!(
        (
            mounts[0].name.as_str(),
            mounts[0].mount_path.as_str(),
            mounts[0].read_only
        ),
        ("corsair-policy", "/etc/corsair", Some(true))
    );
    let record: InjectedRecord = serde_json::from_str(
        out["metadata"]["annotations"]["corsair.dev/injected"]
            .as_str()
            .expect("record"),
    )
    .expect("record is JSON");
    assert_eq!(record.port_name.as_deref(), Some("http"));
    assert_eq!(
        (
            record.upstream_port,
            record.proxy_port,
            record.mode.as_str()
        ),
        (8080, 15380, "native")
    );
    // The annotation that was there stays.
    assert_eq!(
        out["metadata"]["annotations"]["corsair.dev/policy"],
        json!("api")
    );
}

#[test]
fn annotation_key_slash_is_escaped_in_the_patch_path() {
    let injection = run(&web_pod(), &native()).expect("injects");
    let paths: Vec<String> = injection
        .patch
        .0
        .iter()
        .filter_map(|op| match op {
            PatchOperation::Add(a) => Some(a.path.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/corsair.dev~1injected".to_owned()),
        "{paths:?}"
    );
}

#[test]
fn sidecar_is_restricted() {
    let out = apply(&web_pod(), &run(&web_pod(), &native()).expect("injects"));
    let sc = sidecar_of(&out).security_context.expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    let resources = sidecar_of(&out).resources.expect("resources");
    assert_eq!(
        resources.requests.expect("requests")["cpu"],
        Quantity("50m".into())
    );
    assert_eq!(
        resources.limits.expect("limits")["memory"],
        Quantity("128Mi".into())
    );
}

#[test]
fn second_pass_changes_nothing() {
    let pod = web_pod();
    let once = apply(&pod, &run(&pod, &native()).expect("injects"));
    let again = run(&once, &native()).expect("admits");
    assert_eq!(again.outcome, InjectOutcome::AlreadyInjected);
    assert!(again.patch.0.is_empty());
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

/// A container of the proxy's name that no injection put there (no mark) is taken for the
/// proxy, and the pod's creator is told so.
#[test]
fn a_container_of_the_proxys_name_without_the_mark_is_said() {
    let mut pod = web_pod();
    pod["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "corsair-proxy", "image": "someone-else:1"}));
    let admitted = run(&pod, &native()).expect("admits");
    assert_eq!(admitted.outcome, InjectOutcome::AlreadyInjected);
    assert!(admitted.patch.0.is_empty());
    warns(&admitted, "taken");
}

#[test]
fn creates_missing_annotations_init_containers_and_volumes() {
    let mut pod = web_pod();
    pod["metadata"] = json!({"name": "web", "labels": {"corsair.dev/inject": "enabled"}});
    // Without the policy annotation nothing is injected...
    let skipped = run(&pod, &native()).expect("admits");
    assert_eq!(skipped.outcome, InjectOutcome::SkippedNoPolicy);
    assert!(skipped.patch.0.is_empty());
    warns(&skipped, "corsair.dev/policy");

    // ...and with it alone, every parent is created.
    pod["metadata"]["annotations"] = json!({"corsair.dev/policy": "api"});
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    assert_eq!(
        out["spec"]["initContainers"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(out["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    assert!(out["metadata"]["annotations"]["corsair.dev/injected"].is_string());
}

#[test]
fn goes_after_existing_init_containers_and_native_sidecars() {
    let mut pod = web_pod();
    pod["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "migrate"},
        {"name": "log-shipper", "image": "vector", "restartPolicy": "Always"}
    ]);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["migrate", "log-shipper", "corsair-proxy"]);
    let volumes: Vec<&str> = out["spec"]["volumes"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(volumes, ["data", "corsair-policy"]);
}

/// The stop flags of the sidecar and the warnings of its injection.
fn stop_args(pod: &Value, config: &InjectConfig) -> (Vec<String>, Vec<String>) {
    let injection = run(pod, config).expect("injects");
    let args = sidecar_of(&apply(pod, &injection)).args.expect("args");
    let stop = args
        .iter()
        .position(|a| a == "--shutdown-delay" || a == "--drain-timeout")
        .map(|i| args[i..].to_vec())
        .unwrap_or_default();
    (stop, injection.warnings)
}

/// `corsair.dev/shutdown-delay` reaches a regular-container sidecar, which is stopped with
/// the app, with the drain cut to what the grace period leaves; a native one, stopped after
/// the app, does without it, and the answer says so.
#[test]
fn the_shutdown_delay_goes_to_a_regular_container_only() {
    let mut pod = web_pod();
    for written in ["10", "10s"] {
        pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!(written);
        let (stop, warnings) = stop_args(&pod, &container());
        // 30 s of grace: 10 s delay, 19 s drain, a second to spare.
        assert_eq!(
            stop,
            ["--shutdown-delay", "10", "--drain-timeout", "19"],
            "{written}"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }
    let (stop, warnings) = stop_args(&pod, &native());
    assert!(stop.is_empty(), "{stop:?}");
    assert!(
        warnings.len() == 1
            && warnings[0].contains("corsair.dev/shutdown-delay")
            && warnings[0].contains("native sidecar"),
        "{warnings:?}"
    );
    // A short delay in a long grace period leaves the proxy's own drain timeout.
    pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!("3");
    pod["spec"]["terminationGracePeriodSeconds"] = json!(60);
    assert_eq!(stop_args(&pod, &container()).0, ["--shutdown-delay", "3"]);
    // A delay that leaves no time to drain is passed on, with a second to drain and a warning.
    pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!("10");
    pod["spec"]["terminationGracePeriodSeconds"] = json!(10);
    let (stop, warnings) = stop_args(&pod, &container());
    assert_eq!(stop, ["--shutdown-delay", "10", "--drain-timeout", "1"]);
    assert!(
        warnings.len() == 1 && warnings[0].contains("terminationGracePeriodSeconds (10 s)"),
        "{warnings:?}"
    );
    // 0 is no delay; the drain still fits the grace period (here 10 s).
    pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!("0");
    assert_eq!(stop_args(&pod, &container()).0, ["--drain-timeout", "9"]);
    pod["spec"]["terminationGracePeriodSeconds"] = json!(30);
    assert_eq!(stop_args(&pod, &container()), (vec![], vec![]));
    for bad in ["", "ten", "-1", "1.5", "601", "10m", "99999999999"] {
        pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!(bad);
        match run(&pod, &container()) {
            Err(InjectError::InvalidAnnotation { key, value, .. }) => {
                assert_eq!((key, value.as_str()), ("corsair.dev/shutdown-delay", bad));
            }
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
}

/// Without the annotation, a regular-container sidecar waits as long as the app's own preStop
/// sleep, during which the app still serves; the annotation wins over it.
#[test]
fn the_apps_pre_stop_sleep_is_the_default_shutdown_delay() {
    let exec = |command: &[&str]| json!({"exec": {"command": command}});
    for (pre_stop, delay) in [
        (json!({"sleep": {"seconds": 15}}), Some("15")),
        (exec(&["sleep", "5"]), Some("5")),
        (exec(&["/bin/sh", "-c", "sleep 7"]), Some("7")),
        (exec(&["/usr/bin/sleep", "8"]), Some("8")),
        (exec(&["sleep", "9s"]), Some("9")),
        // The app serves until the script goes on, whatever it then does.
        (exec(&["sh", "-c", "sleep 5 && nginx -s quit"]), Some("5")),
        (exec(&["/bin/bash", "-ec", "sleep 6; kill 1"]), Some("6")),
        // Anything else is the app's own business.
        (exec(&["sh", "-c", "sleep 5 & nginx -s quit"]), None),
        (exec(&["sh", "-c", "echo bye; sleep 5"]), None),
        (exec(&["sleep", "infinity"]), None),
        (exec(&["sleep", "601"]), None),
        (exec(&["/drain"]), None),
        (json!({"httpGet": {"path": "/drain", "port": 8080}}), None),
        (json!({"sleep": {"seconds": 0}}), None),
    ] {
        let mut pod = web_pod();
        pod["spec"]["containers"][0]["lifecycle"] = json!({"preStop": pre_stop});
        let (stop, warnings) = stop_args(&pod, &container());
        assert_eq!(stop.get(1).map(String::as_str), delay, "{pre_stop}");
        assert!(warnings.is_empty(), "{pre_stop}: {warnings:?}");
        // A native sidecar outlives the app: nothing to wait for.
        assert_eq!(stop_args(&pod, &native()), (vec![], vec![]), "{pre_stop}");
    }
    let mut pod = web_pod();
    pod["spec"]["containers"][0]["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 15}}});
    pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!("2");
    assert_eq!(stop_args(&pod, &container()).0, ["--shutdown-delay", "2"]);
}

#[test]
fn container_mode_appends_a_regular_container() {
    let config = container();
    let out = apply(&web_pod(), &run(&web_pod(), &config).expect("injects"));
    assert!(out["spec"].get("initContainers").is_none());
    assert_eq!(out["spec"]["containers"][0]["name"], json!("app"));
    assert_eq!(out["spec"]["containers"][1]["name"], json!("corsair-proxy"));
    assert_eq!(sidecar_of(&out).restart_policy, None);
}

#[test]
fn port_annotation_by_name_wins_over_http() {
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/port"] = json!("api");
    pod["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 8080},
        {"name": "api", "containerPort": 9000}
    ]);
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    assert_eq!(
        out["spec"]["containers"][0]["ports"][0]["name"],
        json!("http")
    );
    assert_eq!(
        out["spec"]["containers"][0]["ports"][1],
        json!({"containerPort": 9000})
    );
    let sidecar = sidecar_of(&out);
    assert_eq!(
        sidecar.ports.expect("ports")[0].name.as_deref(),
        Some("api")
    );
    assert!(
        sidecar
            .args
            .expect("args")
            .contains(&"http://localhost:9000".to_owned())
    );
}

#[test]
fn numeric_port_without_name_warns_and_names_the_proxy_port() {
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/port"] = json!("3000");
    pod["spec"]["containers"][0] =
        json!({"name": "app", "image": "node", "ports": [{"containerPort": 3000}]});
    let injection = run(&pod, &native()).expect("injects");
    assert_eq!(injection.warnings.len(), 1);
    warns(&injection, "corsair-http");
    let out = apply(&pod, &injection);
    assert_eq!(
        out["spec"]["containers"][0]["ports"][0],
        json!({"containerPort": 3000})
    );
    let sidecar = sidecar_of(&out);
    assert_eq!(
        sidecar.ports.expect("ports")[0].name.as_deref(),
        Some("corsair-http")
    );
    assert!(
        sidecar
            .args
            .expect("args")
            .contains(&"http://localhost:3000".to_owned())
    );
}

#[test]
fn falls_back_to_the_first_tcp_port_of_the_first_container() {
    let mut pod = web_pod();
    pod["spec"]["containers"] = json!([
        {"name": "app", "image": "app", "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "web", "containerPort": 8000}
        ]},
        {"name": "other", "image": "other", "ports": [{"name": "metrics", "containerPort": 9090}]}
    ]);
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    assert_eq!(
        sidecar_of(&out).ports.expect("ports")[0].name.as_deref(),
        Some("web")
    );
    assert_eq!(
        out["spec"]["containers"][0]["ports"][1],
        json!({"containerPort": 8000})
    );
    assert_eq!(
        out["spec"]["containers"][1]["ports"][0]["name"],
        json!("metrics")
    );
}

/// The guess of the first TCP port is refused when that port is plainly TLS; a port named
/// `http` or the annotation still chooses it.
#[test]
fn the_first_port_guess_refuses_a_tls_port() {
    for (port, what) in [
        (json!({"name": "https", "containerPort": 8000}), "\"https\""),
        (
            json!({"name": "tls-api", "containerPort": 8000}),
            "\"tls-api\"",
        ),
        (json!({"containerPort": 443}), "port 443"),
        (json!({"name": "web", "containerPort": 8443}), "port 8443"),
        (json!({"name": "grpc", "containerPort": 8000}), "\"grpc\""),
        (
            json!({"name": "GRPC-api", "containerPort": 8000}),
            "\"GRPC-api\"",
        ),
        (json!({"name": "http2", "containerPort": 8000}), "\"http2\""),
        (
            json!({"name": "h2c-api", "containerPort": 8000}),
            "\"h2c-api\"",
        ),
    ] {
        let mut pod = web_pod();
        pod["spec"]["containers"] = json!([{"name": "app", "image": "app", "ports": [port, {"name": "metrics", "containerPort": 9090}]}]);
        let err = run(&pod, &native()).expect_err(what).to_string();
        assert!(
            err.contains("spec.containers[0].ports[0]")
                && err.contains("corsair.dev/port")
                && err.contains(what),
            "{what}: {err}"
        );
        // Named by the annotation, the same port is taken as asked.
        pod["metadata"]["annotations"]["corsair.dev/port"] = json!("8000");
        if port_number(&pod) == 8000 {
            assert!(run(&pod, &native()).is_ok(), "{what} with the annotation");
        }
    }
    // A plain port named http beside a TLS one: no guess, no refusal.
    let mut pod = web_pod();
    pod["spec"]["containers"] = json!([{"name": "app", "image": "app", "ports": [
        {"name": "https", "containerPort": 8443},
        {"name": "http", "containerPort": 8080}
    ]}]);
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    assert!(
        sidecar_of(&out)
            .args
            .unwrap_or_default()
            .contains(&"http://localhost:8080".to_owned())
    );
    // gRPC-Web travels over HTTP/1.1, and a name that only starts like a protocol is no sign.
    for name in ["grpc-web", "grpcweb", "tlsx", "http20", "web"] {
        let mut pod = web_pod();
        pod["spec"]["containers"] = json!([{"name": "app", "image": "app", "ports": [
            {"name": name, "containerPort": 8000}
        ]}]);
        let out = apply(&pod, &run(&pod, &native()).expect(name));
        assert!(
            sidecar_of(&out)
                .args
                .unwrap_or_default()
                .contains(&"http://localhost:8000".to_owned()),
            "{name}"
        );
    }
}

/// A Service resolves a named target port over the regular containers first, then over the
/// native sidecars; once the app's port gives its name to the proxy, another port of that name
/// would take the traffic past the proxy.
#[test]
fn a_port_name_shared_with_another_container_is_refused() {
    let app =
        json!({"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 8080}]});
    let other = |restart: Option<&str>| {
        let mut c = json!({"name": "other", "image": "o", "ports": [
            {"name": "metrics", "containerPort": 9090},
            {"name": "http", "containerPort": 9091}
        ]});
        if let Some(policy) = restart {
            c["restartPolicy"] = json!(policy);
        }
        c
    };
    for mode in [native(), container()] {
        let mut pod = web_pod();
        pod["spec"]["containers"] = json!([app.clone(), other(None)]);
        let err = run(&pod, &mode).expect_err("second container").to_string();
        assert!(
            err.contains("spec.containers[1].ports[1].name")
                && err.contains("spec.containers[0].ports[0]")
                && err.contains("\"http\""),
            "{err}"
        );
        // The same name on another native sidecar: it comes before the proxy only when the
        // proxy is a native sidecar too; a regular container is found first.
        let mut pod = web_pod();
        pod["spec"]["containers"] = json!([app.clone()]);
        pod["spec"]["initContainers"] = json!([other(Some("Always"))]);
        if mode.sidecar_mode == SidecarMode::Native {
            let err = run(&pod, &mode).expect_err("native sidecar").to_string();
            assert!(
                err.contains("spec.initContainers[0].ports[1].name")
                    && err.contains("corsair.dev/port"),
                "{err}"
            );
        } else {
            assert!(
                run(&pod, &mode).is_ok(),
                "container mode: the proxy comes first"
            );
        }
        // A plain init container has finished before traffic comes, and a UDP port is another
        // Service port: neither is refused.
        pod["spec"]["initContainers"] = json!([other(None)]);
        assert!(run(&pod, &mode).is_ok(), "plain init container");
        let mut udp = other(None);
        udp["ports"][1]["protocol"] = json!("UDP");
        pod["spec"]["initContainers"] = json!([]);
        pod["spec"]["containers"] = json!([app.clone(), udp]);
        assert!(run(&pod, &mode).is_ok(), "UDP port of that name");
    }
}

fn port_number(pod: &Value) -> i64 {
    pod["spec"]["containers"][0]["ports"][0]["containerPort"]
        .as_i64()
        .unwrap_or_default()
}

#[test]
fn http_port_in_a_second_container_is_found() {
    let mut pod = web_pod();
    pod["spec"]["containers"] = json!([
        {"name": "worker", "image": "w", "ports": [{"name": "metrics", "containerPort": 9090}]},
        {"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 8080}],
         "startupProbe": {"httpGet": {"port": "http", "path": "/"}}}
    ]);
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    assert_eq!(
        out["spec"]["containers"][1]["ports"][0],
        json!({"containerPort": 8080})
    );
    assert_eq!(
        out["spec"]["containers"][1]["startupProbe"]["httpGet"]["port"],
        json!(8080)
    );
    assert_eq!(
        out["spec"]["containers"][0]["ports"][0]["name"],
        json!("metrics")
    );
}

#[test]
fn refusals_name_the_cause() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no ports",
            json!([{"name": "app", "image": "a"}]),
            "corsair.dev/port",
        ),
        (
            "proxy port taken",
            json!([{"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 15380}]}]),
            "spec.containers[0].ports[1]",
        ),
        (
            "admin name taken",
            json!([{"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 8080}, {"name": "corsair-admin", "containerPort": 9}]}]),
            "spec.containers[0].ports[1].name",
        ),
    ];
    for (what, containers, needle) in cases {
        let mut pod = web_pod();
        pod["spec"]["containers"] = containers;
        let err = run(&pod, &native()).expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
}

#[test]
fn bad_annotations_are_refused_with_the_annotation_named() {
    let cases = [
        ("corsair.dev/proxy-port", "0"),
        ("corsair.dev/admin-port", "http"),
        ("corsair.dev/image", "has space"),
        ("corsair.dev/log-level", " "),
        // The proxy exits at start on a filter it cannot parse.
        ("corsair.dev/log-level", "info,foo=bar"),
        ("corsair.dev/log-level", "corsair=verbose"),
        ("corsair.dev/port", "70000"),
        ("corsair.dev/port", "grpc"),
        ("corsair.dev/policy", "Not_A_Name"),
    ];
    for (key, value) in cases {
        let mut pod = web_pod();
        pod["metadata"]["annotations"][key] = json!(value);
        let err = run(&pod, &native()).expect_err(key).to_string();
        assert!(err.contains(key), "{key}={value}: {err}");
    }
}

#[test]
fn annotations_override_the_configuration() {
    let mut pod = web_pod();
    let annotations = &mut pod["metadata"]["annotations"];
    annotations["corsair.dev/proxy-port"] = json!("18080");
    annotations["corsair.dev/admin-port"] = json!("18081");
    annotations["corsair.dev/image"] = json!("registry.local/corsair:dev");
    annotations["corsair.dev/log-level"] = json!("corsair=debug");
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    let sidecar = sidecar_of(&out);
    assert_eq!(sidecar.image.as_deref(), Some("registry.local/corsair:dev"));
    // Whatever the image, the container runs the slim binary, not the image's entrypoint.
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&["corsair-proxy".to_owned()][..])
    );
    let args = sidecar.args.expect("args");
    assert!(args.contains(&"[::]:18080".to_owned()) && args.contains(&"[::]:18081".to_owned()));
    assert_eq!(
        sidecar.env.expect("env")[0].value.as_deref(),
        Some("corsair=debug")
    );
    assert_eq!(
        sidecar
            .readiness_probe
            .and_then(|p| p.http_get)
            .map(|h| h.port),
        Some(IntOrString::Int(18081))
    );
}

#[test]
fn same_proxy_and_admin_port_is_refused() {
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/admin-port"] = json!("15380");
    assert_eq!(run(&pod, &native()), Err(InjectError::SamePorts(15380)));
}

/// The webhook configuration keeps these namespaces away; should a call come all the same (a
/// selector edited by hand), the pod is admitted unchanged, saying why.
#[test]
fn a_pod_in_an_excluded_namespace_is_skipped_with_a_warning() {
    let config = InjectConfig {
        excluded_namespaces: ["kube-system".to_owned(), "shop".to_owned()].into(),
        ..native()
    };
    let injection = run(&web_pod(), &config).expect("admits");
    assert_eq!(injection.outcome, InjectOutcome::SkippedExcludedNamespace);
    assert!(injection.patch.0.is_empty());
    warns(&injection, "namespace shop is excluded");
    // Any other namespace is injected as before.
    let injection = inject(&mk_pod(web_pod()), Some("web"), &config, None).expect("admits");
    assert_eq!(injection.outcome, InjectOutcome::Injected);
}

#[test]
fn host_network_is_skipped_with_a_warning() {
    let mut pod = web_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    let injection = run(&pod, &native()).expect("admits");
    assert_eq!(injection.outcome, InjectOutcome::SkippedHostNetwork);
    assert!(injection.patch.0.is_empty());
    assert!(injection.warnings[0].contains("hostNetwork"));
}

/// A pod that budgets its containers together (`spec.resources`) gets a sidecar that takes its
/// share of the budget: with the configured defaults the containers' requests would add up to
/// more than the pod's, which the API server refuses. Annotations still set them.
#[test]
fn with_pod_level_resources_the_sidecar_shares_the_budget() {
    let mut pod = web_pod();
    pod["spec"]["resources"] = json!({"requests": {"cpu": "1"}, "limits": {"cpu": "250m"}});
    pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    for config in [native(), container()] {
        let out = apply(&pod, &run(&pod, &config).expect("injects"));
        let resources = sidecar_of(&out).resources.expect("resources");
        assert_eq!(resources.requests, None);
        assert_eq!(resources.limits, None);
    }
    pod["metadata"]["annotations"]["corsair.dev/proxy-memory-request"] = json!("16Mi");
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    let resources = sidecar_of(&out).resources.expect("resources");
    let requests = resources.requests.expect("the annotation's request");
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("16Mi"));
    assert_eq!(requests.get("cpu"), None);
    assert_eq!(resources.limits, None);
    // Without pod-level resources the defaults apply.
    let plain = web_pod();
    let out = apply(&plain, &run(&plain, &native()).expect("injects"));
    let limits = sidecar_of(&out)
        .resources
        .and_then(|r| r.limits)
        .expect("limits");
    assert_eq!(limits.get("cpu").map(|q| q.0.as_str()), Some("500m"));
}

/// A node port forwarded to the app's port reaches it past the proxy: said, not refused, so
/// that workloads already opted in keep getting pods.
#[test]
fn a_host_port_on_the_taken_over_port_is_warned_of() {
    let mut pod = web_pod();
    pod["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(8080);
    let injection = run(&pod, &native()).expect("injects");
    assert_eq!(injection.outcome, InjectOutcome::Injected);
    assert!(
        injection
            .warnings
            .iter()
            .any(|w| w.contains("spec.containers[0].ports[0].hostPort")
                && w.contains("bypasses the proxy")),
        "{:?}",
        injection.warnings
    );
    // `hostPort: 0` is no host port.
    pod["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(0);
    does_not_warn(&run(&pod, &native()).expect("injects"), "hostPort");
    // On another port of the pod it is not the proxy's business.
    let mut other = web_pod();
    other["spec"]["containers"][0]["ports"]
        .as_array_mut()
        .expect("ports")
        .push(json!({"name": "debug", "containerPort": 9000, "hostPort": 9000, "protocol": "TCP"}));
    let other = run(&other, &native()).expect("injects");
    does_not_warn(&other, "hostPort");
}

/// The unprivileged proxy binds a port below the kernel's limit (1024, unless the pod's sysctl
/// moves it) only where the runtime lowers it: a port an annotation sets there is injected with
/// a warning; one from the controller's flags is said at its start, not on every pod.
#[test]
fn a_port_below_the_unprivileged_limit_is_warned_of() {
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/proxy-port"] = json!("443");
    pod["metadata"]["annotations"]["corsair.dev/admin-port"] = json!("444");
    let injection = run(&pod, &native()).expect("injects");
    assert_eq!(injection.outcome, InjectOutcome::Injected);
    warns(&injection, "corsair.dev/proxy-port: port 443 is below 1024");
    warns(&injection, "corsair.dev/admin-port: port 444 is below 1024");
    let sysctl = |name: &str, value: &str| json!({"sysctls": [{"name": name, "value": value}]});
    // Lowered by the pod, in either spelling: nothing to say.
    for name in [
        "net.ipv4.ip_unprivileged_port_start",
        "net/ipv4/ip_unprivileged_port_start",
    ] {
        pod["spec"]["securityContext"] = sysctl(name, "443");
        does_not_warn(&run(&pod, &native()).expect("injects"), "is below");
    }
    // Raised by the pod: a port above 1024 is below it.
    pod["spec"]["securityContext"] = sysctl("net.ipv4.ip_unprivileged_port_start", "2000");
    pod["metadata"]["annotations"]["corsair.dev/proxy-port"] = json!("1500");
    pod["metadata"]["annotations"]["corsair.dev/admin-port"] = json!("2000");
    let raised = run(&pod, &native()).expect("injects");
    warns(&raised, "port 1500 is below 2000");
    does_not_warn(&raised, "port 2000");
    // From the configuration, or the default ports: not on each pod.
    let config = InjectConfig {
        proxy_port: 80,
        ..native()
    };
    does_not_warn(&run(&web_pod(), &config).expect("injects"), "is below");
    does_not_warn(&run(&web_pod(), &native()).expect("injects"), "is below");
}

/// A Linux container cannot run on a Windows node, and the API server refuses the
/// Linux-only security fields of the sidecar in a pod whose `spec.os` is Windows.
#[test]
fn a_windows_pod_is_skipped_with_a_warning() {
    let by_os = {
        let mut pod = web_pod();
        pod["spec"]["os"] = json!({"name": "windows"});
        pod
    };
    let by_selector = {
        let mut pod = web_pod();
        pod["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "windows"});
        pod
    };
    for pod in [by_os, by_selector] {
        let injection = run(&pod, &native()).expect("admits");
        assert_eq!(injection.outcome, InjectOutcome::SkippedWindows);
        assert!(injection.patch.0.is_empty());
        warns(&injection, "Windows");
    }
    let mut linux = web_pod();
    linux["spec"]["os"] = json!({"name": "linux"});
    linux["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    assert_eq!(
        run(&linux, &native()).expect("injects").outcome,
        InjectOutcome::Injected
    );
}

/// The kubelet runs a static pod from its file: a proxy added to the mirror in the API would
/// be shown there and never run.
#[test]
fn a_static_pods_mirror_is_skipped_with_a_warning() {
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!("0f3a");
    let injection = run(&pod, &native()).expect("admits");
    assert_eq!(injection.outcome, InjectOutcome::SkippedMirrorPod);
    assert!(injection.patch.0.is_empty());
    warns(&injection, "kubernetes.io/config.mirror");
}

/// A mark copied into a pod (or its template) from an injected pod is replaced by the
/// webhook's own, with a warning: where the webhook is not called, the copy hides the pod from
/// the controller's check for pods without the proxy.
#[test]
fn a_copied_injection_mark_is_replaced_with_a_warning() {
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/injected"] = json!("{\"version\":\"0.0.1\"}");
    let injection = run(&pod, &native()).expect("injects");
    assert_eq!(injection.outcome, InjectOutcome::Injected);
    warns(&injection, "metadata.annotations[corsair.dev/injected]");
    let out = apply(&pod, &injection);
    let mark = out["metadata"]["annotations"]["corsair.dev/injected"]
        .as_str()
        .expect("the mark");
    let record: InjectedRecord = serde_json::from_str(mark).expect("the webhook's own record");
    assert_eq!(record.policy, "api");
    // Without the copy, no such warning.
    let clean = run(&web_pod(), &native()).expect("injects");
    assert!(
        clean
            .warnings
            .iter()
            .all(|w| !w.contains("corsair.dev/injected")),
        "{:?}",
        clean.warnings
    );
}

#[test]
fn foreign_volume_named_like_ours_is_refused() {
    let mut pod = web_pod();
    pod["spec"]["volumes"] = json!([{"name": "corsair-policy", "emptyDir": {}}]);
    let err = run(&pod, &native()).expect_err("conflict");
    assert!(err.to_string().contains("spec.volumes[0]"), "{err}");
}

#[test]
fn stale_record_without_sidecar_is_injected_again() {
    let pod = web_pod();
    let once = apply(&pod, &run(&pod, &native()).expect("injects"));
    // Someone copied the pod but dropped the sidecar: the volume and record are reused.
    let mut copy = once.clone();
    copy["spec"]
        .as_object_mut()
        .expect("map")
        .remove("initContainers");
    // As the API server hands it over: its defaults filled in before admission.
    copy["spec"]["volumes"][0]["configMap"]["defaultMode"] = json!(420);
    let again = run(&copy, &native()).expect("injects");
    assert_eq!(again.outcome, InjectOutcome::Injected);
    let out = apply(&copy, &again);
    assert_eq!(out["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        out["spec"]["initContainers"].as_array().map(Vec::len),
        Some(1)
    );
    // The same name with another mode is not ours to reuse.
    copy["spec"]["volumes"][0]["configMap"]["defaultMode"] = json!(256);
    let err = run(&copy, &native()).expect_err("another volume of that name");
    assert!(err.to_string().contains("spec.volumes[0]"), "{err}");
}

#[test]
fn missing_policy_warns_only_with_a_lookup() {
    let pod = mk_pod(web_pod());
    let missing = |ns: &str, name: &str| {
        assert_eq!((ns, name), ("shop", "api"));
        PolicyPresence::Missing
    };
    let warned = inject(&pod, Some("shop"), &native(), Some(&missing)).expect("injects");
    assert_eq!(warned.warnings.len(), 1);
    warns(&warned, "shop/api does not exist");
    let ready = |_: &str, _: &str| PolicyPresence::Ready;
    assert!(
        inject(&pod, Some("shop"), &native(), Some(&ready))
            .expect("injects")
            .warnings
            .is_empty()
    );
    assert!(
        inject(&pod, Some("shop"), &native(), None)
            .expect("injects")
            .warnings
            .is_empty()
    );
}

#[test]
fn sidecar_modes() {
    assert_eq!(SidecarMode::Auto.resolve(true), SidecarMode::Native);
    assert_eq!(SidecarMode::Auto.resolve(false), SidecarMode::Container);
    assert_eq!(SidecarMode::Container.resolve(true), SidecarMode::Container);
    assert_eq!(
        "native".parse::<SidecarMode>().ok(),
        Some(SidecarMode::Native)
    );
    assert!("sidecar".parse::<SidecarMode>().is_err());
    assert!(native_sidecars_supported("1", "33"));
    assert!(native_sidecars_supported("1", "34+"));
    assert!(native_sidecars_supported("2", "0"));
    // Native sidecars run there, but a Service's named port does not reach one.
    assert!(!native_sidecars_supported("1", "32+"));
    assert!(!native_sidecars_supported("1", "31"));
    assert!(!native_sidecars_supported("1", "29"));
    assert!(!native_sidecars_supported("1", "28"));
    assert!(!native_sidecars_supported("", "x"));
}

#[test]
fn default_image_is_the_slim_sidecar_at_the_crate_version() {
    assert_eq!(
        InjectConfig::default().image,
        format!(
            "ghcr.io/corsair-dev/corsair-proxy:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn resource_annotations_override_the_configuration() {
    let mut pod = web_pod();
    let annotations = &mut pod["metadata"]["annotations"];
    annotations["corsair.dev/proxy-cpu-request"] = json!("0.1");
    annotations["corsair.dev/proxy-cpu-limit"] = json!("2");
    annotations["corsair.dev/proxy-memory-request"] = json!("48Mi");
    annotations["corsair.dev/proxy-memory-limit"] = json!("256Mi");
    let out = apply(&pod, &run(&pod, &native()).expect("injects"));
    let resources = sidecar_of(&out).resources.expect("resources");
    let get = |m: Option<std::collections::BTreeMap<String, Quantity>>, k: &str| {
        m.and_then(|m| m.get(k).map(|q| q.0.clone()))
    };
    assert_eq!(
        get(resources.requests.clone(), "cpu").as_deref(),
        Some("0.1")
    );
    assert_eq!(get(resources.requests, "memory").as_deref(), Some("48Mi"));
    assert_eq!(get(resources.limits.clone(), "cpu").as_deref(), Some("2"));
    assert_eq!(get(resources.limits, "memory").as_deref(), Some("256Mi"));
}

/// A quantity the configuration leaves unset is left out of the container, and a request is
/// then never compared with a limit that is not there.
#[test]
fn unset_quantities_are_left_out_of_the_sidecar() {
    let config = InjectConfig {
        resources: SidecarResources {
            cpu_limit: None,
            memory_request: None,
            ..SidecarResources::default()
        },
        ..native()
    };
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/proxy-cpu-request"] = json!("4");
    let out = apply(&pod, &run(&pod, &config).expect("injects"));
    let resources = sidecar_of(&out).resources.expect("resources");
    let names = |m: Option<std::collections::BTreeMap<String, Quantity>>| {
        m.map(|m| {
            m.into_iter()
                .map(|(k, v)| format!("{k}={}", v.0))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(names(resources.requests), Some(vec!["cpu=4".to_owned()]));
    assert_eq!(
        names(resources.limits),
        Some(vec!["memory=128Mi".to_owned()])
    );
    // With nothing set at all, the container has no resources to speak of.
    let config = InjectConfig {
        resources: SidecarResources {
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
        },
        ..native()
    };
    let out = apply(&pod, &run(&pod, &config).expect("injects"));
    let resources = sidecar_of(&out).resources.expect("resources");
    assert_eq!(names(resources.requests), Some(vec!["cpu=4".to_owned()]));
    assert_eq!(resources.limits, None);
}

#[test]
fn every_quantity_form_kubernetes_reads_is_read_with_its_value() {
    const GI: u128 = 1 << 30;
    for (text, nanos) in [
        ("100m", 100_000_000),
        ("0.5", 500_000_000),
        (".5", 500_000_000),
        ("+1", 1_000_000_000),
        ("1.", 1_000_000_000),
        ("1e3", 1_000_000_000_000),
        ("1E3", 1_000_000_000_000),
        ("5e-1", 500_000_000),
        ("500n", 500),
        ("100u", 100_000),
        ("2k", 2_000_000_000_000),
        ("1E", 10u128.pow(27)),
        ("64Mi", (64 << 20) * 1_000_000_000),
        ("1.5Gi", 3 * GI / 2 * 1_000_000_000),
        // Finer than a nano-unit is rounded up, as Kubernetes rounds.
        ("0.0000000001", 1),
        ("1e-12", 1),
        ("0", 0),
        ("0e-50", 0),
    ] {
        assert_eq!(quantity_value(text), Some(nanos), "{text}");
    }
}

/// Kubernetes compares quantities exactly: a request equal to its limit in another spelling is
/// not above it (as floats, `700m` read 0.7000000000000001, above `0.7`).
#[test]
fn equal_quantities_in_other_spellings_are_equal() {
    for (a, b) in [
        ("700m", "0.7"),
        ("9m", "0.009"),
        ("7e-1", "0.7"),
        ("1Ki", "1024"),
        ("1k", "1000"),
        ("1500m", "1.5"),
        ("1Gi", "1073741824"),
    ] {
        assert_eq!(quantity_value(a), quantity_value(b), "{a} {b}");
        assert!(!above_limit(Some(a), Some(b)), "{a} above {b}");
        assert!(!above_limit(Some(b), Some(a)), "{b} above {a}");
    }
    assert!(above_limit(Some("701m"), Some("0.7")));
}

#[test]
fn a_sidecar_request_above_its_limit_is_refused_naming_both_annotations() {
    // A lowered limit alone: the default request (50m) is above it.
    for (key, value, other) in [
        (
            "corsair.dev/proxy-cpu-limit",
            "20m",
            "corsair.dev/proxy-cpu-request",
        ),
        (
            "corsair.dev/proxy-memory-request",
            "1Gi",
            "corsair.dev/proxy-memory-limit",
        ),
    ] {
        let mut pod = web_pod();
        pod["metadata"]["annotations"][key] = json!(value);
        match run(&pod, &native()) {
            Err(err @ InjectError::RequestAboveLimit { .. }) => {
                let message = err.to_string();
                assert!(
                    message.contains(key) && message.contains(other),
                    "{message}"
                );
                assert!(message.contains(value), "{message}");
            }
            other => panic!("{key}={value} was not refused: {other:?}"),
        }
    }
    // Equal is allowed, as Kubernetes allows it, whatever the spelling.
    let mut pod = web_pod();
    pod["metadata"]["annotations"]["corsair.dev/proxy-cpu-request"] = json!("0.5");
    pod["metadata"]["annotations"]["corsair.dev/proxy-cpu-limit"] = json!("500m");
    assert!(run(&pod, &native()).is_ok());
}

#[test]
fn a_resource_annotation_that_is_not_a_quantity_is_refused_naming_it() {
    for bad in [
        "", "lots", ".", "64 Mi", "-1", "1.5.2", "1e", "1Kb", "1e3Mi",
    ] {
        let mut pod = web_pod();
        pod["metadata"]["annotations"]["corsair.dev/proxy-memory-limit"] = json!(bad);
        match run(&pod, &native()) {
            Err(InjectError::InvalidAnnotation { key, value, .. }) => {
                assert_eq!(key, "corsair.dev/proxy-memory-limit");
                assert_eq!(value, bad);
            }
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
}

/// A request equal to its limit in another spelling is not above it: Kubernetes compares
/// quantities exactly.
#[test]
fn a_request_equal_to_its_limit_in_another_spelling_is_taken() {
    for (request, limit) in [
        ("700m", "0.7"),
        ("9m", "0.009"),
        ("7e-1", "0.7"),
        ("1100m", "1.1"),
        ("0.7", "700m"),
    ] {
        let mut pod = web_pod();
        pod["metadata"]["annotations"]["corsair.dev/proxy-cpu-request"] = json!(request);
        pod["metadata"]["annotations"]["corsair.dev/proxy-cpu-limit"] = json!(limit);
        if let Err(err) = run(&pod, &native()) {
            panic!("{request} under {limit}: {err}");
        }
    }
}

/// A declared port on the proxy's port is named by its field, not by an annotation the pod
/// does not set.
#[test]
fn a_declared_port_on_the_proxy_port_is_named_by_its_field() {
    let mut pod = web_pod();
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(15380);
    let message = run(&pod, &native()).expect_err("a conflict").to_string();
    assert!(
        message.starts_with("spec.containers[0].ports[0]") && message.contains("15380"),
        "{message}"
    );
}

/// Kubernetes admits a negative grace period and takes it as 1 s; at its extreme it must not
/// overflow the drain arithmetic.
#[test]
fn a_negative_grace_period_is_taken_as_one_second() {
    let mut pod = web_pod();
    pod["spec"]["terminationGracePeriodSeconds"] = json!(i64::MIN);
    pod["metadata"]["annotations"]["corsair.dev/shutdown-delay"] = json!("5");
    let injection = run(&pod, &container()).expect("injects");
    warns(
        &injection,
        "leaves no time to drain within spec.terminationGracePeriodSeconds (1 s)",
    );
}
