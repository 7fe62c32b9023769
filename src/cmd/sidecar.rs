//! The sidecar flags shared by `corsair controller` and `corsair webhook`, so that both inject
//! the same proxy from the same flags.

use corsair_controller::names;
use corsair_controller::webhook::{self, InjectConfig, SidecarMode, SidecarResources};

/// How the injected proxy is built. Each value can be overridden per pod by annotation.
#[derive(clap::Args, Debug, Clone)]
pub struct SidecarArgs {
    /// `native`: an init container with `restartPolicy: Always` (Kubernetes 1.33+, the first
    /// where a Service's named port reaches a native sidecar); `container`: a regular
    /// container; `auto`: native from 1.33 on (`corsair controller` asks the API server;
    /// `corsair webhook` has none and assumes 1.33 or later).
    #[arg(long, default_value = "auto", value_parser = parse_mode)]
    pub sidecar_mode: SidecarMode,
    /// Sidecar image [default: ghcr.io/corsair-dev/corsair-proxy:<this version>, the slim image];
    /// per pod: annotation corsair.dev/image. The sidecar runs the command `corsair-proxy`,
    /// which the image must have on its PATH.
    #[arg(long)]
    sidecar_image: Option<String>,
    /// Proxy port of the sidecar; per pod: annotation corsair.dev/proxy-port. Below 1024 the
    /// unprivileged proxy binds it only where the runtime allows (a warning at start).
    #[arg(long, default_value_t = names::PROXY_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    sidecar_proxy_port: u16,
    /// Admin port of the sidecar; per pod: annotation corsair.dev/admin-port.
    #[arg(long, default_value_t = names::ADMIN_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    sidecar_admin_port: u16,
    /// Log filter of the sidecar (`RUST_LOG` syntax); per pod: annotation corsair.dev/log-level.
    #[arg(long, default_value = "info")]
    sidecar_log_level: String,
    /// CPU request of the sidecar; empty (`--sidecar-cpu-request=`) for none (Kubernetes then
    /// sets it to the limit, if there is one).
    #[arg(long, default_value = "50m", value_parser = parse_quantity)]
    sidecar_cpu_request: Quantity,
    /// CPU limit of the sidecar; empty (`--sidecar-cpu-limit=`) for none.
    #[arg(long, default_value = "500m", value_parser = parse_quantity)]
    sidecar_cpu_limit: Quantity,
    /// Memory request of the sidecar; empty for none (Kubernetes then sets it to the limit, if
    /// there is one).
    #[arg(long, default_value = "32Mi", value_parser = parse_quantity)]
    sidecar_memory_request: Quantity,
    /// Memory limit of the sidecar; empty for none.
    #[arg(long, default_value = "128Mi", value_parser = parse_quantity)]
    sidecar_memory_limit: Quantity,
    /// Namespaces whose pods are never injected, comma-separated: those the mutating webhook
    /// configuration's namespaceSelector leaves out. The controller warns on a workload opted
    /// in there instead of rolling it out for nothing.
    #[arg(long, value_delimiter = ',')]
    excluded_namespaces: Vec<String>,
}

/// A resource quantity of the sidecar, or none when the flag's value is empty. An alias, because
/// clap reads a field written `Option<String>` as a flag that may be left out, not as a value
/// the parser may make `None`.
type Quantity = Option<String>;

/// A quantity as the webhook reads one: a bad default would have every opted-in pod refused
/// by the API server, rolled out by the controller all the same.
fn parse_quantity(s: &str) -> Result<Quantity, String> {
    if s.is_empty() {
        return Ok(None);
    }
    match webhook::quantity_value(s) {
        Some(_) => Ok(Some(s.to_owned())),
        None => Err(
            "not a Kubernetes quantity such as `100m`, `0.5` or `64Mi` (empty for none)".to_owned(),
        ),
    }
}

fn parse_mode(s: &str) -> Result<SidecarMode, String> {
    s.parse()
        .map_err(|e: webhook::ParseSidecarModeError| e.to_string())
}

impl SidecarArgs {
    /// The injection configuration, with `sidecar_mode` already resolved to native or container.
    pub fn inject_config(&self, sidecar_mode: SidecarMode) -> anyhow::Result<InjectConfig> {
        anyhow::ensure!(
            self.sidecar_proxy_port != self.sidecar_admin_port,
            "--sidecar-proxy-port and --sidecar-admin-port are both {}",
            self.sidecar_proxy_port
        );
        for (request_flag, request, limit_flag, limit) in [
            (
                "--sidecar-cpu-request",
                &self.sidecar_cpu_request,
                "--sidecar-cpu-limit",
                &self.sidecar_cpu_limit,
            ),
            (
                "--sidecar-memory-request",
                &self.sidecar_memory_request,
                "--sidecar-memory-limit",
                &self.sidecar_memory_limit,
            ),
        ] {
            // The webhook would refuse every pod that takes both defaults, naming annotations
            // nobody set.
            let (request, limit) = (request.as_deref(), limit.as_deref());
            let (shown_request, shown_limit) = (request.unwrap_or(""), limit.unwrap_or(""));
            anyhow::ensure!(
                !webhook::above_limit(request, limit),
                "{request_flag} {shown_request} is above {limit_flag} {shown_limit}{}",
                if limit.and_then(webhook::quantity_value) == Some(0) {
                    " (an empty value, not 0, leaves a limit out)"
                } else {
                    ""
                }
            );
        }
        for (flag, port) in [
            ("--sidecar-proxy-port", self.sidecar_proxy_port),
            ("--sidecar-admin-port", self.sidecar_admin_port),
        ] {
            if port < names::MIN_UNPRIVILEGED_PORT {
                tracing::warn!(
                    flag,
                    port,
                    "below 1024: the unprivileged sidecar binds it only where the container \
                     runtime allows it (containerd 2.0 on) or the pod sets the sysctl \
                     net.ipv4.ip_unprivileged_port_start; elsewhere every injected proxy exits \
                     at start"
                );
            }
        }
        // Every injected proxy would exit at start on a filter it cannot parse.
        corsair_runtime::logging::check_filter(&self.sidecar_log_level)
            .map_err(|e| anyhow::anyhow!("--sidecar-log-level: {e}"))?;
        Ok(InjectConfig {
            image: self
                .sidecar_image
                .clone()
                .unwrap_or_else(|| InjectConfig::default().image),
            proxy_port: self.sidecar_proxy_port,
            admin_port: self.sidecar_admin_port,
            resources: SidecarResources {
                cpu_request: self.sidecar_cpu_request.clone(),
                cpu_limit: self.sidecar_cpu_limit.clone(),
                memory_request: self.sidecar_memory_request.clone(),
                memory_limit: self.sidecar_memory_limit.clone(),
            },
            log_level: self.sidecar_log_level.clone(),
            sidecar_mode,
            excluded_namespaces: self
                .excluded_namespaces
                .iter()
                .filter(|ns| !ns.is_empty())
                .cloned()
                .collect(),
        })
    }
}
