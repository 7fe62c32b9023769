//! The seam between the webhook and the proxy: what the webhook injects into a pod must be a
//! command line and environment that `corsair proxy` understands.

use clap::{CommandFactory as _, Parser as _};
use corsair_controller::names;
use corsair_controller::webhook::{InjectConfig, SidecarMode, inject};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;

use crate::{Cli, Command};

/// The sidecar the webhook injects into a small annotated pod.
fn injected_sidecar(mode: SidecarMode) -> Container {
    let original = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "annotations": {
                "corsair.dev/policy": "api",
                "corsair.dev/log-level": "corsair_proxy=debug",
                "corsair.dev/shutdown-delay": "10"
            }
        },
        "spec": {"containers": [{
            "name": "app",
            "image": "registry.local/app:1",
            "ports": [{"name": "http", "containerPort": 8080}]
        }]}
    });
    let pod: Pod = serde_json::from_value(original.clone()).expect("a valid pod");
    let config = InjectConfig {
        sidecar_mode: mode,
        ..InjectConfig::default()
    };
    let injection = inject(&pod, Some("default"), &config, None).expect("the pod is injected");
    let mut patched = original;
    json_patch::patch(&mut patched, &injection.patch).expect("the patch applies");
    let pod: Pod = serde_json::from_value(patched).expect("the patched pod is a Pod");
    let spec = pod.spec.expect("spec");
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .find(|c| c.name == names::SIDECAR_NAME)
        .expect("the sidecar is injected")
}

#[test]
fn the_injected_command_line_is_one_corsair_proxy_accepts() {
    for mode in [SidecarMode::Native, SidecarMode::Container] {
        let sidecar = injected_sidecar(mode);
        let command = sidecar.command.expect("the sidecar names its command");
        assert_eq!(
            command,
            ["corsair-proxy"],
            "the slim binary, whatever the image"
        );
        let args = sidecar.args.expect("args");
        // A regular container is stopped with the app, and gets the delay; a native one is not.
        let delayed = args.windows(2).any(|w| w == ["--shutdown-delay", "10"]);
        assert_eq!(
            delayed,
            mode == SidecarMode::Container,
            "{mode:?}: {args:?}"
        );
        corsair_proxy::cli::Cli::try_parse_from(command.iter().chain(&args))
            .unwrap_or_else(|e| panic!("`corsair-proxy {}` is refused: {e}", args.join(" ")));
        // The same flags work as `corsair proxy`, for an image that wraps the full binary.
        let cli = Cli::try_parse_from(
            ["corsair", "proxy"]
                .into_iter()
                .map(str::to_owned)
                .chain(args.clone()),
        )
        .unwrap_or_else(|e| panic!("`corsair proxy {}` is refused: {e}", args.join(" ")));
        assert!(matches!(cli.command, Command::Proxy(_)), "{args:?}");
    }
}

#[test]
fn every_injected_variable_is_read_by_corsair_proxy() {
    let sidecar = injected_sidecar(SidecarMode::Native);
    let slim = corsair_proxy::cli::Cli::command();
    let read: Vec<String> = slim
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let env = sidecar.env.expect("the sidecar gets its log filter");
    for var in &env {
        assert!(
            read.contains(&var.name),
            "{} is set on the sidecar but `corsair-proxy` reads only {read:?}",
            var.name
        );
    }
    assert!(
        env.iter()
            .any(|v| v.value.as_deref() == Some("corsair_proxy=debug")),
        "the log-level annotation reaches the sidecar: {env:?}"
    );
}

/// Flags and variables of an argument list, with what a user sees of each.
fn flags(command: &clap::Command) -> Vec<(String, Option<String>, String, Vec<String>)> {
    let mut flags: Vec<_> = command
        .get_arguments()
        .map(|a| {
            (
                a.get_long().unwrap_or_default().to_owned(),
                a.get_env().map(|e| e.to_string_lossy().into_owned()),
                a.get_help().map(ToString::to_string).unwrap_or_default(),
                a.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
            )
        })
        .collect();
    flags.sort();
    flags
}

/// One definition: `corsair proxy` and `corsair-proxy` take the same flags, variables, help
/// and defaults (the binaries' `--help` is compared in tests/proxy_cli.rs).
#[test]
fn corsair_proxy_and_the_slim_binary_share_their_flags() {
    let mut cli = Cli::command();
    cli.build();
    let proxy = cli.find_subcommand("proxy").expect("a proxy subcommand");
    let mut slim = corsair_proxy::cli::Cli::command();
    slim.build();
    let (ours, theirs) = (flags(proxy), flags(&slim));
    assert!(
        ours.iter()
            .any(|f| f.0 == "policy" && f.1.as_deref() == Some("CORSAIR_POLICY")),
        "{ours:?}"
    );
    assert!(ours.iter().any(|f| f.0 == "log-format"), "{ours:?}");
    assert_eq!(ours, theirs);
}
