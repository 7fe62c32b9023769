//! Names shared by the reconcilers, the webhooks and the chart. Changing one is an API change.

/// API group of the CorsPolicy CRD.
pub const GROUP: &str = "corsair.dev";
/// Opt-in annotation on a workload or its pod template: the name of the CorsPolicy to enforce.
pub const POLICY_ANNOTATION: &str = "corsair.dev/policy";
/// Label the controller puts on opted-in pod templates; the mutating webhook's objectSelector.
pub const INJECT_LABEL: &str = "corsair.dev/inject";
/// Value of [`INJECT_LABEL`].
pub const INJECT_LABEL_VALUE: &str = "enabled";
/// Per-pod override: the container port (name or number) that the Service targets.
pub const PORT_ANNOTATION: &str = "corsair.dev/port";
/// Per-pod override of the proxy port.
pub const PROXY_PORT_ANNOTATION: &str = "corsair.dev/proxy-port";
/// Per-pod override of the admin port.
pub const ADMIN_PORT_ANNOTATION: &str = "corsair.dev/admin-port";
/// Per-pod override of the sidecar image.
pub const IMAGE_ANNOTATION: &str = "corsair.dev/image";
/// Per-pod override of the sidecar log level (`RUST_LOG` syntax).
pub const LOG_LEVEL_ANNOTATION: &str = "corsair.dev/log-level";
/// Per-pod override of the sidecar's CPU request.
pub const CPU_REQUEST_ANNOTATION: &str = "corsair.dev/proxy-cpu-request";
/// Per-pod override of the sidecar's CPU limit.
pub const CPU_LIMIT_ANNOTATION: &str = "corsair.dev/proxy-cpu-limit";
/// Per-pod override of the sidecar's memory request.
pub const MEMORY_REQUEST_ANNOTATION: &str = "corsair.dev/proxy-memory-request";
/// Per-pod override of the sidecar's memory limit.
pub const MEMORY_LIMIT_ANNOTATION: &str = "corsair.dev/proxy-memory-limit";
/// Per-pod: seconds a regular-container sidecar keeps accepting after SIGTERM, as the app does
/// behind a preStop sleep, before it drains.
pub const SHUTDOWN_DELAY_ANNOTATION: &str = "corsair.dev/shutdown-delay";
/// Written by the webhook: what it injected (JSON), so a second pass yields the same pod.
pub const INJECTED_ANNOTATION: &str = "corsair.dev/injected";

/// Set by the kubelet on the API object that mirrors a static pod, which it runs from a file.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Name of the injected container.
pub const SIDECAR_NAME: &str = "corsair-proxy";
/// Name of the volume holding the rendered policy.
pub const POLICY_VOLUME: &str = "corsair-policy";
/// Where the policy volume is mounted in the sidecar.
pub const POLICY_MOUNT_PATH: &str = "/etc/corsair";
/// Key of the rendered policy in the ConfigMap; the sidecar reads `/etc/corsair/policy.json`.
pub const POLICY_CONFIGMAP_KEY: &str = "policy.json";
/// Default proxy port.
pub const PROXY_PORT: u16 = 15380;
/// Default admin port (health, readiness, metrics).
pub const ADMIN_PORT: u16 = 15381;
/// The kernel's default lowest port an unprivileged process may bind; the sidecar runs as a
/// non-root user with every capability dropped.
pub const MIN_UNPRIVILEGED_PORT: u16 = 1024;
/// Name of the admin container port.
pub const ADMIN_PORT_NAME: &str = "corsair-admin";

/// Field manager of the CorsPolicy reconciler (ConfigMaps, status).
pub const POLICY_MANAGER: &str = "corsair-policy-controller";
/// Field manager of the workload reconciler (pod template label and annotation).
pub const WORKLOAD_MANAGER: &str = "corsair-workload-controller";

/// Longest CorsPolicy name, held by the CRD's CEL rule, both admission webhooks and the
/// rendered ConfigMap: the name is also the value of that ConfigMap's `corsair.dev/policy`
/// label, and label values hold at most 63 characters.
pub const MAX_POLICY_NAME_LEN: usize = corsair_policy::model::MAX_NAME_LEN;

/// What [`is_policy_name`] checks, as error messages say it.
pub const POLICY_NAME_RULE: &str =
    "is not a CorsPolicy name (a lowercase DNS subdomain of at most 63 characters)";

/// A CorsPolicy name: a DNS subdomain of at most [`MAX_POLICY_NAME_LEN`] characters.
pub use corsair_policy::model::is_policy_name;

/// Name of the ConfigMap that holds the rendered policy `policy`.
pub fn policy_configmap_name(policy: &str) -> String {
    format!("corsair-policy-{policy}")
}
