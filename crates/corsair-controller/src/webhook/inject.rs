//! The mutating webhook's logic as pure functions: a Pod in, a JSON patch and warnings out.
//!
//! Nothing here does I/O, so every rule is unit-tested without HTTP. The patch is built op by op
//! against the pod as the API server sent it (never by re-serialising a typed `Pod`, which would
//! drop fields this crate's `k8s-openapi` does not know), and it creates every missing parent map
//! or array before adding under it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction,
    LifecycleHandler, Pod, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names;

/// How the sidecar is added to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarMode {
    /// Native where the cluster supports it, a plain container otherwise. Resolve it with
    /// [`SidecarMode::resolve`] before serving; an unresolved `Auto` injects natively.
    #[default]
    Auto,
    /// An init container with `restartPolicy: Always` (Kubernetes 1.33+: see
    /// [`native_sidecars_supported`]).
    Native,
    /// A regular container, for clusters without native sidecars.
    Container,
}

impl SidecarMode {
    /// Turns `Auto` into `Native` or `Container`; explicit choices are kept.
    pub fn resolve(self, native_supported: bool) -> SidecarMode {
        match self {
            SidecarMode::Auto if native_supported => SidecarMode::Native,
            SidecarMode::Auto => SidecarMode::Container,
            other => other,
        }
    }

    fn is_native(self) -> bool {
        !matches!(self, SidecarMode::Container)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Auto => "auto",
            SidecarMode::Native => "native",
            SidecarMode::Container => "container",
        }
    }
}

impl fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--sidecar-mode` value.
#[derive(Debug, thiserror::Error)]
#[error("sidecar mode {0:?} is not one of auto, native, container")]
pub struct ParseSidecarModeError(String);

impl FromStr for SidecarMode {
    type Err = ParseSidecarModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(SidecarMode::Auto),
            "native" => Ok(SidecarMode::Native),
            "container" => Ok(SidecarMode::Container),
            other => Err(ParseSidecarModeError(other.to_owned())),
        }
    }
}

/// Whether a cluster whose API server has this version serves Corsair's native sidecar: one
/// that runs native sidecars (beta and on since 1.29) is not enough, a Service's named
/// `targetPort` must also resolve to one. The EndpointSlice controller does that from 1.33 on
/// (kubernetes/kubernetes#127976 in 1.32 resolved it for Endpoints only, #128850 in 1.33 for
/// EndpointSlices, which kube-proxy reads; neither backported); before, the Service of every
/// opted-in workload would lose its endpoints. Every kubelet that a 1.33 API server accepts
/// (three minors back) runs native sidecars. `major`/`minor` are the strings of `/version`,
/// where GKE and EKS append `+`.
pub fn native_sidecars_supported(major: &str, minor: &str) -> bool {
    let num = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (num(major), num(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 33),
        _ => false,
    }
}

/// Requests and limits of the sidecar, as Kubernetes quantities; `None` leaves one unset (many
/// clusters run without CPU limits, whose throttling costs latency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: Some("50m".into()),
            cpu_limit: Some("500m".into()),
            memory_request: Some("32Mi".into()),
            memory_limit: Some("128Mi".into()),
        }
    }
}

/// The slim sidecar image, holding only the `corsair-proxy` binary; tagged with the version.
pub const SIDECAR_IMAGE_REPOSITORY: &str = "ghcr.io/corsair-dev/corsair-proxy";
/// The command the injected container runs, looked up on the image's `PATH`.
pub const SIDECAR_COMMAND: &str = "corsair-proxy";

/// What the injector adds to a pod, from the controller's configuration; annotations on a pod
/// can override the image, ports, resources and log level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Sidecar image; it must have `corsair-proxy` on its `PATH`, which the injected container
    /// runs (its entrypoint is ignored).
    pub image: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub resources: SidecarResources,
    /// Log filter of the sidecar (`RUST_LOG` syntax), passed as `CORSAIR_LOG`.
    pub log_level: String,
    pub sidecar_mode: SidecarMode,
    /// Namespaces whose pods are never injected. The webhook configuration's
    /// `namespaceSelector` keeps them from the webhook; knowing them here lets the controller
    /// warn instead of opting a workload in there for nothing.
    pub excluded_namespaces: BTreeSet<String>,
}

impl InjectConfig {
    /// Whether the pods of `namespace` are never injected.
    pub fn excludes(&self, namespace: &str) -> bool {
        self.excluded_namespaces.contains(namespace)
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: format!("{SIDECAR_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
            proxy_port: names::PROXY_PORT,
            admin_port: names::ADMIN_PORT,
            resources: SidecarResources::default(),
            log_level: "info".into(),
            sidecar_mode: SidecarMode::Auto,
            excluded_namespaces: BTreeSet::new(),
        }
    }
}

/// What the controller knows about a CorsPolicy, so the webhook can warn about a pod whose
/// policy does not exist (the pod still starts: its volume is optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPresence {
    /// The policy exists and its ConfigMap is rendered.
    Ready,
    /// No CorsPolicy of that name in the namespace.
    Missing,
    /// The policy exists but was refused; the message says why.
    Invalid(String),
}

/// Looks up CorsPolicies; the controller backs it with a reflector store. The stateless
/// `corsair webhook` has none and then never warns about missing policies.
pub trait PolicyLookup: Send + Sync {
    fn lookup(&self, namespace: &str, name: &str) -> PolicyPresence;
}

impl<F> PolicyLookup for F
where
    F: Fn(&str, &str) -> PolicyPresence + Send + Sync,
{
    fn lookup(&self, namespace: &str, name: &str) -> PolicyPresence {
        self(namespace, name)
    }
}

/// What happened to a pod; also the `result` label of the injection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectOutcome {
    Injected,
    AlreadyInjected,
    SkippedHostNetwork,
    SkippedExcludedNamespace,
    SkippedNoPolicy,
    SkippedMirrorPod,
    SkippedWindows,
}

impl InjectOutcome {
    pub fn metric_label(self) -> &'static str {
        match self {
            InjectOutcome::Injected => "injected",
            InjectOutcome::AlreadyInjected => "already_injected",
            InjectOutcome::SkippedHostNetwork => "skipped_host_network",
            InjectOutcome::SkippedExcludedNamespace => "skipped_excluded_namespace",
            InjectOutcome::SkippedNoPolicy => "skipped_no_policy",
            InjectOutcome::SkippedMirrorPod => "skipped_mirror_pod",
            InjectOutcome::SkippedWindows => "skipped_windows",
        }
    }
}

/// The injector's answer for an admitted pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub outcome: InjectOutcome,
    /// Empty unless `outcome` is `Injected`.
    pub patch: Patch,
    /// Shown by kubectl; each names the pod field or annotation concerned.
    pub warnings: Vec<String>,
}

/// Why a pod cannot be injected: the pod is refused with this message, which names the field
/// or annotation to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("pod has no spec.containers")]
    NoContainers,
    #[error("annotation {key}: {value:?} {reason}")]
    InvalidAnnotation {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "annotations {request_key} ({request:?}) and {limit_key} ({limit:?}): the sidecar's request \
         is above its limit, which Kubernetes refuses (an annotation left out is the controller's \
         default)"
    )]
    RequestAboveLimit {
        request_key: &'static str,
        request: String,
        limit_key: &'static str,
        limit: String,
    },
    #[error(
        "annotation {key}: no container of the pod has a TCP port named {0:?}",
        key = names::PORT_ANNOTATION
    )]
    PortNotFound(String),
    #[error(
        "no container of the pod declares a TCP port; set the annotation {} to the port the Service targets",
        names::PORT_ANNOTATION
    )]
    NoPort,
    #[error(
        "{field}: port {port} is used by the corsair proxy; choose other ports with the annotations {} and {}",
        names::PROXY_PORT_ANNOTATION,
        names::ADMIN_PORT_ANNOTATION
    )]
    PortConflict { field: String, port: u16 },
    #[error("{field}: the port name {name:?} is reserved for the corsair proxy")]
    PortNameConflict { field: String, name: &'static str },
    #[error(
        "{field}: the proxy would take over port {port}{}, which {why}, and it speaks plain \
         HTTP/1.1 to the app; set the annotation {} to the app's plain-HTTP port",
        name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default(),
        names::PORT_ANNOTATION
    )]
    NotPlainHttpGuess {
        field: String,
        port: u16,
        name: Option<String>,
        why: &'static str,
    },
    #[error(
        "{field}: the port name {name:?} is also on {target}, the port the proxy takes over; a \
         Service targeting {name:?} would reach this port instead and bypass the proxy: rename \
         this port (renaming the other would do the same), or set the annotation {} to a port \
         of its own",
        names::PORT_ANNOTATION
    )]
    SharedPortName {
        field: String,
        name: String,
        target: String,
    },
    #[error("the proxy port and the admin port are both {0}")]
    SamePorts(u16),
    #[error("{field}: a volume named {name:?} already exists and is not the corsair policy volume")]
    VolumeConflict { field: String, name: &'static str },
}

/// What the webhook recorded in [`names::INJECTED_ANNOTATION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectedRecord {
    pub version: String,
    pub mode: String,
    pub image: String,
    pub policy: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// The app port the proxy forwards to.
    pub upstream_port: u16,
    /// The port name the proxy took over from the app, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
}

/// Name of the proxy's port when the app's port had no name to take over.
const FALLBACK_PROXY_PORT_NAME: &str = "corsair-http";

/// Decides what to do with `pod` (being created in `namespace`) and builds the patch.
///
/// `Ok` always admits the pod, patched or not; `Err` means it must be refused. The steps, in
/// the order their errors are reported: is the pod ours to inject ([`skip`]), what its
/// annotations override ([`Overrides::read`]), which port the proxy takes over
/// ([`find_target`], [`check_port_conflicts`]), what to warn about ([`warnings`]), and the
/// patch ([`port_takeover`], [`sidecar_op`], [`volume_op`]).
pub fn inject(
    pod: &Pod,
    namespace: Option<&str>,
    config: &InjectConfig,
    lookup: Option<&dyn PolicyLookup>,
) -> Result<Injection, InjectError> {
    let spec = pod.spec.as_ref().ok_or(InjectError::NoContainers)?;
    if spec.containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let excluded = namespace.filter(|ns| config.excludes(ns));
    let policy = match skip(&pod.metadata, spec, excluded)? {
        Ok(policy) => policy,
        Err(skipped) => return Ok(skipped),
    };
    let overrides = Overrides::read(&annotation, config, has_pod_resources(spec))?;
    let (proxy_port, admin_port) = (overrides.proxy_port, overrides.admin_port);
    let target = find_target(spec, annotation(names::PORT_ANNOTATION))?;
    check_port_conflicts(spec, &target, proxy_port, admin_port)?;
    check_shared_port_name(spec, &target, config.sidecar_mode.is_native())?;
    let namespace = namespace.or(pod.metadata.namespace.as_deref());
    let mut warnings = warnings(lookup, namespace, policy, &target, proxy_port);
    // A port from the controller's flags is said once, at its start, not on every pod.
    let annotated = [
        (proxy_port, names::PROXY_PORT_ANNOTATION),
        (admin_port, names::ADMIN_PORT_ANNOTATION),
    ]
    .into_iter()
    .filter(|(_, key)| annotation(key).is_some());
    warnings.extend(privileged_ports(spec, annotated));
    warnings.extend(host_port(spec, &target));
    if annotation(names::INJECTED_ANNOTATION).is_some() {
        // Replaced below; but on a template, every pod created while this webhook cannot be
        // reached would carry it too and look injected to the controller's check.
        warnings.push(format!(
            "metadata.annotations[{}] is set before injection (copied from an injected pod?): \
             it is replaced here, but a pod created with it while the webhook is unreachable \
             looks injected and is not reported as running without the proxy; remove it",
            names::INJECTED_ANNOTATION
        ));
    }
    let mode = config.sidecar_mode;
    let stop = stop_timing(spec, &target, overrides.shutdown_delay, mode, &mut warnings);

    let record = InjectedRecord {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: if mode.is_native() {
            "native"
        } else {
            "container"
        }
        .to_owned(),
        image: overrides.image,
        policy: policy.to_owned(),
        proxy_port,
        admin_port,
        upstream_port: target.number,
        port_name: target.name.clone(),
    };
    let sidecar = sidecar_container(
        &overrides.resources,
        &record,
        &overrides.log_level,
        stop,
        mode.is_native(),
    );

    let mut ops = port_takeover(spec, &target);
    ops.push(sidecar_op(spec, value_of(&sidecar), mode.is_native()));
    ops.extend(volume_op(spec, policy)?);
    // The policy annotation was found above, so the annotations map exists.
    ops.push(add(
        ptr(["metadata", "annotations", names::INJECTED_ANNOTATION]),
        Value::String(value_of(&record).to_string()),
    ));
    Ok(Injection {
        outcome: InjectOutcome::Injected,
        patch: Patch(ops),
        warnings,
    })
}

/// The policy the pod names, or why the pod is admitted unchanged (`Ok(Err(..))`): it already
/// has the proxy, it mirrors a static pod, its namespace is `excluded`, it uses the host
/// network, or it names no policy. A malformed name refuses it.
pub(crate) fn skip<'a>(
    meta: &'a ObjectMeta,
    spec: &PodSpec,
    excluded: Option<&str>,
) -> Result<Result<&'a str, Injection>, InjectError> {
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    let policy = annotation(names::POLICY_ANNOTATION).map(String::as_str);
    let has_sidecar = spec
        .containers
        .iter()
        .any(|c| c.name == names::SIDECAR_NAME)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == names::SIDECAR_NAME);
    if has_sidecar {
        // Without the webhook's mark the container was not put there by an injection: say it
        // is taken for the proxy, in case it is someone else's of the same name.
        let warnings = if annotation(names::INJECTED_ANNOTATION).is_none() {
            vec![format!(
                "a container is named {:?} but metadata.annotations[{}] is not set: it is taken \
                 for the corsair proxy and nothing is injected; rename it if it is not",
                names::SIDECAR_NAME,
                names::INJECTED_ANNOTATION
            )]
        } else {
            Vec::new()
        };
        return Ok(Err(Injection::unpatched(
            InjectOutcome::AlreadyInjected,
            warnings,
        )));
    }
    // The kubelet runs a static pod from the file on its node; a container added to the API
    // object that mirrors it would be shown there and never run.
    if annotation(names::MIRROR_ANNOTATION).is_some() {
        return Ok(Err(Injection::unpatched(
            InjectOutcome::SkippedMirrorPod,
            vec![format!(
                "metadata.annotations[{}] is set: this pod mirrors a static pod, which the kubelet \
                 runs from a file on its node, so the corsair proxy was not injected; add it to \
                 the file instead",
                names::MIRROR_ANNOTATION
            )],
        )));
    }
    if let Some(namespace) = excluded {
        return Ok(Err(Injection::unpatched(
            InjectOutcome::SkippedExcludedNamespace,
            vec![format!(
                "namespace {namespace} is excluded from injection (--excluded-namespaces): the \
                 corsair proxy was not injected"
            )],
        )));
    }
    if runs_on_windows(spec) {
        return Ok(Err(Injection::unpatched(
            InjectOutcome::SkippedWindows,
            vec![
                "the pod runs on Windows (spec.os.name, or the kubernetes.io/os node selector): \
                 the corsair proxy is a Linux container, so it was not injected"
                    .to_owned(),
            ],
        )));
    }
    if spec.host_network == Some(true) {
        return Ok(Err(Injection::unpatched(
            InjectOutcome::SkippedHostNetwork,
            vec![
                "spec.hostNetwork is true: the corsair proxy was not injected, because its ports would be taken on the node"
                    .to_owned(),
            ],
        )));
    }
    let Some(policy) = policy else {
        return Ok(Err(Injection::unpatched(
            InjectOutcome::SkippedNoPolicy,
            vec![format!(
                "metadata.annotations[{}] is not set: the corsair proxy was not injected",
                names::POLICY_ANNOTATION
            )],
        )));
    };
    if !names::is_policy_name(policy) {
        return Err(InjectError::InvalidAnnotation {
            key: names::POLICY_ANNOTATION,
            value: policy.to_owned(),
            reason: names::POLICY_NAME_RULE,
        });
    }
    Ok(Ok(policy))
}

/// The sysctl that sets the lowest port an unprivileged process may bind (Kubernetes also
/// takes it with slashes).
const UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";

/// A warning for each sidecar port below the lowest one an unprivileged process may bind: the
/// proxy runs as a non-root user with every capability dropped, so it binds such a port only
/// where the runtime lowers that limit (containerd from 2.0 does, for every pod) or the pod
/// sets the sysctl itself, which this checks. Elsewhere the proxy exits at start.
fn privileged_ports(
    spec: &PodSpec,
    ports: impl Iterator<Item = (u16, &'static str)>,
) -> Vec<String> {
    let start = spec
        .security_context
        .as_ref()
        .and_then(|c| c.sysctls.as_ref())
        .and_then(|s| {
            s.iter()
                .find(|s| s.name.replace('/', ".") == UNPRIVILEGED_PORT_START)
        })
        .and_then(|s| s.value.parse::<u16>().ok())
        .unwrap_or(names::MIN_UNPRIVILEGED_PORT);
    ports
        .filter(|(port, _)| *port < start)
        .map(|(port, key)| {
            format!(
                "{key}: port {port} is below {start}, the lowest an unprivileged process may bind \
                 here unless the container runtime lowers it (containerd 2.0 does) or the pod sets \
                 the sysctl {UNPRIVILEGED_PORT_START} in spec.securityContext.sysctls; elsewhere \
                 the proxy cannot start"
            )
        })
        .collect()
}

/// Whether the pod sets pod-level requests or limits (`spec.resources`, Kubernetes 1.32 on).
fn has_pod_resources(spec: &PodSpec) -> bool {
    spec.resources.as_ref().is_some_and(|r| {
        r.requests.as_ref().is_some_and(|q| !q.is_empty())
            || r.limits.as_ref().is_some_and(|q| !q.is_empty())
    })
}

/// Whether the pod is for Windows nodes, where a Linux container cannot run (and the API
/// server refuses the Linux-only security fields the sidecar sets, when `spec.os` says so).
fn runs_on_windows(spec: &PodSpec) -> bool {
    spec.os.as_ref().is_some_and(|os| os.name == "windows")
        || spec
            .node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .is_some_and(|os| os == "windows")
}

/// What the pod's annotations set for its sidecar, defaults filled in from the configuration.
struct Overrides {
    image: String,
    log_level: String,
    resources: SidecarResources,
    proxy_port: u16,
    admin_port: u16,
    /// Whole seconds; `None` when the annotation is absent.
    shutdown_delay: Option<u32>,
}

impl Overrides {
    /// Reads and checks the override annotations, in a fixed order, so that the first bad one
    /// is the one reported.
    ///
    /// With `pod_resources` (the pod budgets its containers together in `spec.resources`) the
    /// sidecar takes its share of that budget: it gets only the quantities its annotations
    /// set, not the configured defaults, which the API server would refuse once the
    /// containers' requests add up to more than the pod's, or a limit is above the pod's.
    fn read<'a>(
        annotation: &impl Fn(&str) -> Option<&'a str>,
        config: &InjectConfig,
        pod_resources: bool,
    ) -> Result<Self, InjectError> {
        let image = match annotation(names::IMAGE_ANNOTATION) {
            Some(v) if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(InjectError::InvalidAnnotation {
                    key: names::IMAGE_ANNOTATION,
                    value: v.to_owned(),
                    reason: "is not an image reference",
                });
            }
            Some(v) => v.to_owned(),
            None => config.image.clone(),
        };
        let log_level = match annotation(names::LOG_LEVEL_ANNOTATION) {
            // The proxy parses it at start and exits on a bad one: refused here instead.
            Some(v)
                if v.trim().is_empty()
                    || v.chars().any(char::is_control)
                    || corsair_runtime::logging::check_filter(v).is_err() =>
            {
                return Err(InjectError::InvalidAnnotation {
                    key: names::LOG_LEVEL_ANNOTATION,
                    value: v.to_owned(),
                    reason: "is not a log filter such as `info` or `info,corsair_proxy=debug` (the proxy would not start)",
                });
            }
            Some(v) => v.to_owned(),
            None => config.log_level.clone(),
        };
        let quantity = |key: &'static str, default: &Option<String>| match annotation(key) {
            Some(v) if quantity_value(v).is_none() => Err(InjectError::InvalidAnnotation {
                key,
                value: v.to_owned(),
                reason: "is not a Kubernetes quantity such as `100m`, `0.5` or `64Mi`",
            }),
            Some(v) => Ok(Some(v.to_owned())),
            None => Ok(default.clone()),
        };
        let none = SidecarResources {
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
        };
        let defaults = if pod_resources {
            &none
        } else {
            &config.resources
        };
        let resources = SidecarResources {
            cpu_request: quantity(names::CPU_REQUEST_ANNOTATION, &defaults.cpu_request)?,
            cpu_limit: quantity(names::CPU_LIMIT_ANNOTATION, &defaults.cpu_limit)?,
            memory_request: quantity(names::MEMORY_REQUEST_ANNOTATION, &defaults.memory_request)?,
            memory_limit: quantity(names::MEMORY_LIMIT_ANNOTATION, &defaults.memory_limit)?,
        };
        // The API server refuses a pod whose request is above its limit, naming the pod's
        // field: refuse it here, naming the annotations, before the ReplicaSet loops on it.
        for (request_key, request, limit_key, limit) in [
            (
                names::CPU_REQUEST_ANNOTATION,
                &resources.cpu_request,
                names::CPU_LIMIT_ANNOTATION,
                &resources.cpu_limit,
            ),
            (
                names::MEMORY_REQUEST_ANNOTATION,
                &resources.memory_request,
                names::MEMORY_LIMIT_ANNOTATION,
                &resources.memory_limit,
            ),
        ] {
            if above_limit(request.as_deref(), limit.as_deref()) {
                return Err(InjectError::RequestAboveLimit {
                    request_key,
                    request: request.clone().unwrap_or_default(),
                    limit_key,
                    limit: limit.clone().unwrap_or_default(),
                });
            }
        }
        let proxy_port = port_annotation(
            annotation(names::PROXY_PORT_ANNOTATION),
            names::PROXY_PORT_ANNOTATION,
            config.proxy_port,
        )?;
        let admin_port = port_annotation(
            annotation(names::ADMIN_PORT_ANNOTATION),
            names::ADMIN_PORT_ANNOTATION,
            config.admin_port,
        )?;
        if proxy_port == admin_port {
            return Err(InjectError::SamePorts(proxy_port));
        }
        let shutdown_delay = match annotation(names::SHUTDOWN_DELAY_ANNOTATION) {
            None => None,
            Some(v) => match v.strip_suffix('s').unwrap_or(v).parse::<u32>() {
                Ok(seconds) if seconds <= MAX_SHUTDOWN_DELAY => Some(seconds),
                _ => {
                    return Err(InjectError::InvalidAnnotation {
                        key: names::SHUTDOWN_DELAY_ANNOTATION,
                        value: v.to_owned(),
                        reason: "is not whole seconds from 0 to 600, such as `10` or `10s`",
                    });
                }
            },
        };
        Ok(Overrides {
            image,
            log_level,
            resources,
            proxy_port,
            admin_port,
            shutdown_delay,
        })
    }
}

/// What the admission answer warns about: a missing or invalid policy, an unnamed app port.
fn warnings(
    lookup: Option<&dyn PolicyLookup>,
    namespace: Option<&str>,
    policy: &str,
    target: &Target,
    proxy_port: u16,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let (Some(lookup), Some(ns)) = (lookup, namespace) {
        match lookup.lookup(ns, policy) {
            PolicyPresence::Ready => {}
            PolicyPresence::Missing => warnings.push(format!(
                "CorsPolicy {ns}/{policy} does not exist: the proxy forwards requests without CORS headers until it is created"
            )),
            PolicyPresence::Invalid(why) => warnings.push(format!(
                "CorsPolicy {ns}/{policy} is invalid ({why}): the proxy enforces its last valid version, or no CORS at all"
            )),
        }
    }
    if target.name.is_none() {
        warnings.push(format!(
            "port {} has no name: a Service must target the port name {FALLBACK_PROXY_PORT_NAME:?} or the number {proxy_port} to reach the corsair proxy",
            target.number
        ));
    }
    warnings
}

/// Longest `corsair.dev/shutdown-delay`: ten minutes, far above any endpoint propagation.
const MAX_SHUTDOWN_DELAY: u32 = 600;

/// How a regular-container sidecar stops, when it needs to be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StopTiming {
    /// Seconds it keeps accepting after SIGTERM.
    delay: Option<u32>,
    /// Seconds its in-flight requests get after that, when the grace period leaves fewer than
    /// the proxy's default (25).
    drain: Option<u32>,
}

/// The proxy's own drain timeout (`--drain-timeout`).
const DEFAULT_DRAIN: i64 = 25;

/// How the sidecar stops. Only a regular container gets SIGTERM together with the app, with
/// the whole grace period from then on; a native sidecar is stopped after the app has exited,
/// on what is left, and is not told. Its delay is the annotation's, or else as long as the
/// app's own `preStop` sleep, during which the app still serves. Its drain gets what the grace
/// period leaves, so that the proxy closes its connections itself rather than being killed.
fn stop_timing(
    spec: &PodSpec,
    target: &Target,
    annotated: Option<u32>,
    mode: SidecarMode,
    warnings: &mut Vec<String>,
) -> Option<StopTiming> {
    let key = names::SHUTDOWN_DELAY_ANNOTATION;
    if mode.is_native() {
        if annotated.is_some_and(|d| d > 0) {
            warnings.push(format!(
                "{key} is not used: the corsair proxy is a native sidecar, which Kubernetes \
                 stops only after the application containers have exited"
            ));
        }
        return None;
    }
    // An annotation of 0 also turns off the delay taken from the app's preStop sleep.
    let delay = annotated
        .or_else(|| pre_stop_sleep(&spec.containers[target.container]))
        .filter(|d| *d > 0);
    // Kubernetes' default grace period; a negative one it admits and takes as 1 s.
    let grace = match spec.termination_grace_period_seconds {
        None => 30,
        Some(grace) if grace < 0 => 1,
        Some(grace) => grace,
    };
    let room = grace - i64::from(delay.unwrap_or(0)) - 1;
    if let Some(delay) = delay
        && room < 1
    {
        warnings.push(format!(
            "the corsair proxy's shutdown delay ({delay} s, {key} or the app's preStop sleep) \
             leaves no time to drain within spec.terminationGracePeriodSeconds ({grace} s): the \
             kubelet kills it with requests in flight"
        ));
    }
    let drain = (room < DEFAULT_DRAIN).then(|| u32::try_from(room.max(1)).unwrap_or(1));
    (delay.is_some() || drain.is_some()).then_some(StopTiming { delay, drain })
}

/// Seconds of the container's `preStop` sleep: the `sleep` action, or an `exec` of `sleep N`
/// (`5` or `5s`), directly or at the start of a shell script (`sh -c "sleep 5 && nginx -s
/// quit"`): the common ways to keep serving while Kubernetes stops sending traffic.
fn pre_stop_sleep(container: &Container) -> Option<u32> {
    let pre_stop = container.lifecycle.as_ref()?.pre_stop.as_ref()?;
    let seconds = if let Some(sleep) = &pre_stop.sleep {
        u32::try_from(sleep.seconds).ok()?
    } else {
        let command = pre_stop.exec.as_ref()?.command.as_ref()?;
        let (program, argument) = match command.as_slice() {
            // `-c`, `-ec`, `-lc`…: the script is the next argument.
            [shell, flags, script]
                if shell.ends_with("sh") && flags.starts_with('-') && flags.ends_with('c') =>
            {
                let (program, rest) = script.trim_start().split_once(char::is_whitespace)?;
                let rest = rest.trim_start();
                let end = rest
                    .find(|c: char| c.is_whitespace() || ";&|".contains(c))
                    .unwrap_or(rest.len());
                let (argument, after) = rest.split_at(end);
                // Only a sleep that the rest of the script waits for (not `sleep 5 &`).
                let after = after.trim_start();
                let waited = after.is_empty()
                    || after.starts_with(';')
                    || after.starts_with("&&")
                    || after.starts_with("||");
                if !waited {
                    return None;
                }
                (program, argument)
            }
            [program, argument] => (program.as_str(), argument.as_str()),
            _ => return None,
        };
        if program.rsplit('/').next() != Some("sleep") {
            return None;
        }
        argument
            .strip_suffix('s')
            .unwrap_or(argument)
            .parse()
            .ok()?
    };
    (seconds <= MAX_SHUTDOWN_DELAY).then_some(seconds)
}

/// The app's port gives up its name (the Service resolves a named targetPort over regular
/// containers first), and the app's own probes that used the name get the number.
fn port_takeover(spec: &PodSpec, target: &Target) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    if let (Some(name), Some(port_index)) = (&target.name, target.port_index) {
        let c = target.container;
        ops.push(remove(ptr([
            "spec",
            "containers",
            &c.to_string(),
            "ports",
            &port_index.to_string(),
            "name",
        ])));
        for field in named_port_refs(&spec.containers[c], name) {
            let mut path = vec!["spec".to_owned(), "containers".to_owned(), c.to_string()];
            path.extend(field);
            ops.push(replace(ptr(&path), Value::from(target.number)));
        }
    }
    ops
}

/// Adds the sidecar where it belongs.
fn sidecar_op(spec: &PodSpec, sidecar: Value, native: bool) -> PatchOperation {
    if native {
        // Last among the init containers: it starts after every other init container and
        // native sidecar (none of which needs inbound traffic), right before the app, and it
        // stops first, before any mesh sidecar it may sit behind.
        match &spec.init_containers {
            None => add(ptr(["spec", "initContainers"]), Value::Array(vec![sidecar])),
            Some(_) => add(ptr(["spec", "initContainers", "-"]), sidecar),
        }
    } else {
        // Last, so the app stays the pod's default container for `kubectl logs` and `exec`.
        add(ptr(["spec", "containers", "-"]), sidecar)
    }
}

/// Adds the policy volume, unless an earlier injection left the same one; a different volume
/// of that name refuses the pod.
fn volume_op(spec: &PodSpec, policy: &str) -> Result<Option<PatchOperation>, InjectError> {
    let volume = policy_volume(policy);
    match &spec.volumes {
        None => Ok(Some(add(
            ptr(["spec", "volumes"]),
            Value::Array(vec![value_of(&volume)]),
        ))),
        Some(volumes) => match volumes.iter().position(|v| v.name == names::POLICY_VOLUME) {
            None => Ok(Some(add(ptr(["spec", "volumes", "-"]), value_of(&volume)))),
            // Left by an earlier injection of this pod whose sidecar was since removed.
            Some(i) if without_defaults(&volumes[i]) == volume => Ok(None),
            Some(i) => Err(InjectError::VolumeConflict {
                field: format!("spec.volumes[{i}]"),
                name: names::POLICY_VOLUME,
            }),
        },
    }
}

impl Injection {
    fn unpatched(outcome: InjectOutcome, warnings: Vec<String>) -> Self {
        Self {
            outcome,
            patch: Patch(Vec::new()),
            warnings,
        }
    }
}

/// The app port the proxy takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    container: usize,
    /// Index in the container's `ports`, when the port is declared.
    port_index: Option<usize>,
    number: u16,
    name: Option<String>,
}

impl Target {
    /// The port's field in the pod, for messages.
    fn field(&self) -> String {
        format!(
            "spec.containers[{}].ports[{}]",
            self.container,
            self.port_index.unwrap_or_default()
        )
    }
}

fn is_tcp(p: &ContainerPort) -> bool {
    p.protocol.as_deref().is_none_or(|proto| proto == "TCP")
}

/// The port the Service targets: the `corsair.dev/port` annotation (a name or a number), else a
/// port named `http`, else the first TCP port of the first container.
fn find_target(spec: &PodSpec, annotation: Option<&str>) -> Result<Target, InjectError> {
    let declared = || {
        spec.containers
            .iter()
            .enumerate()
            .flat_map(|(c, container)| {
                container
                    .ports
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, p)| is_tcp(p))
                    .map(move |(i, p)| (c, i, p))
            })
    };
    let target = |(c, i, p): (usize, usize, &ContainerPort)| {
        u16::try_from(p.container_port)
            .ok()
            .filter(|n| *n > 0)
            .map(|number| Target {
                container: c,
                port_index: Some(i),
                number,
                name: p.name.clone().filter(|n| !n.is_empty()),
            })
    };
    match annotation {
        Some(value) if value.bytes().all(|b| b.is_ascii_digit()) => {
            let number = value
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| InjectError::InvalidAnnotation {
                    key: names::PORT_ANNOTATION,
                    value: value.to_owned(),
                    reason: "is not a port number between 1 and 65535",
                })?;
            Ok(declared()
                .filter(|(_, _, p)| p.container_port == i32::from(number))
                .find_map(target)
                .unwrap_or(Target {
                    container: 0,
                    port_index: None,
                    number,
                    name: None,
                }))
        }
        Some(name) => declared()
            .filter(|(_, _, p)| p.name.as_deref() == Some(name))
            .find_map(target)
            .ok_or_else(|| InjectError::PortNotFound(name.to_owned())),
        None => {
            if let Some(http) = declared()
                .filter(|(_, _, p)| p.name.as_deref() == Some("http"))
                .find_map(target)
            {
                return Ok(http);
            }
            // A guess: refuse it when the port plainly does not speak HTTP/1.1 in clear, which
            // the proxy in front would turn into an outage (every request a 502) instead of a
            // refused pod.
            let first = declared()
                .filter(|(c, _, _)| *c == 0)
                .find_map(target)
                .ok_or(InjectError::NoPort)?;
            if let Some(why) = not_plain_http(first.number, first.name.as_deref()) {
                return Err(InjectError::NotPlainHttpGuess {
                    field: first.field(),
                    port: first.number,
                    name: first.name,
                    why,
                });
            }
            Ok(first)
        }
    }
}

/// Why a port is plainly not one the proxy can speak to: port 443 or 8443, or a name that says
/// HTTPS, TLS, gRPC or HTTP/2 in clear, read as Istio reads port names (`https`, `https-web`,
/// `tls`, `grpcs`, `grpc`, `grpc-api`, `http2`, `h2c`; `grpc-web` is gRPC-Web, which HTTP/1.1
/// carries).
fn not_plain_http(number: u16, name: Option<&str>) -> Option<&'static str> {
    let name = name.unwrap_or_default();
    let protocol = name.split('-').next().unwrap_or_default();
    let is = |p: &str| protocol.eq_ignore_ascii_case(p);
    if matches!(number, 443 | 8443) || is("https") || is("tls") || is("grpcs") {
        Some("looks like TLS")
    } else if is("grpc")
        && !name
            .get(..8)
            .is_some_and(|n| n.eq_ignore_ascii_case("grpc-web"))
    {
        Some("is named for gRPC, which needs HTTP/2")
    } else if is("http2") || is("h2c") {
        Some("is named for HTTP/2 in clear (h2c)")
    } else {
        None
    }
}

/// Refuses a pod where another container carries the name of the port the proxy takes over.
/// A Service resolves a named target port to the first match over the regular containers, then
/// over the native sidecars: once the app's port gives its name to the proxy, that other port
/// would take the traffic and nothing would enforce the policy. Another native sidecar comes
/// first only when the proxy is one too (last among them); as a regular container it wins.
fn check_shared_port_name(
    spec: &PodSpec,
    target: &Target,
    native: bool,
) -> Result<(), InjectError> {
    let Some(name) = target.name.as_deref() else {
        return Ok(());
    };
    let others = every_container(spec).filter(|(kind, c, container)| match *kind {
        "containers" => *c != target.container,
        _ => native && container.restart_policy.as_deref() == Some("Always"),
    });
    for (kind, c, container) in others {
        let mut ports = container.ports.iter().flatten().enumerate();
        if let Some((i, _)) = ports.find(|(_, p)| is_tcp(p) && p.name.as_deref() == Some(name)) {
            return Err(InjectError::SharedPortName {
                field: format!("spec.{kind}[{c}].ports[{i}].name"),
                name: name.to_owned(),
                target: target.field(),
            });
        }
    }
    Ok(())
}

/// Every container of the pod with its list's field name and its index there: the regular
/// containers, then the init containers.
fn every_container(spec: &PodSpec) -> impl Iterator<Item = (&'static str, usize, &Container)> {
    let containers = spec.containers.iter().enumerate();
    let init = spec.init_containers.iter().flatten().enumerate();
    containers
        .map(|(i, c)| ("containers", i, c))
        .chain(init.map(|(i, c)| ("initContainers", i, c)))
}

/// A warning when the taken-over port is one the node forwards to (`hostPort`): that path
/// reaches the app without passing the proxy, whatever the Service does. Refusing such pods
/// would stall workloads already opted in; the warning reaches them as `InjectionWarning`.
fn host_port(spec: &PodSpec, target: &Target) -> Option<String> {
    let host_port = target
        .port_index
        .and_then(|i| spec.containers[target.container].ports.as_ref()?.get(i))
        .and_then(|p| p.host_port)
        .filter(|p| *p > 0)?;
    Some(format!(
        "{}.hostPort: the node's port {host_port} forwards straight to the app's port, so \
         traffic sent there bypasses the proxy and its CORS enforcement; remove hostPort and \
         reach the pod through a Service, or set the annotation {} to a port without one",
        target.field(),
        names::PORT_ANNOTATION
    ))
}

/// Refuses pods where a container already uses the proxy's ports or port names.
fn check_port_conflicts(
    spec: &PodSpec,
    target: &Target,
    proxy_port: u16,
    admin_port: u16,
) -> Result<(), InjectError> {
    // An undeclared port can come only from the annotation; a declared one is named below.
    if target.port_index.is_none() && (target.number == proxy_port || target.number == admin_port) {
        return Err(InjectError::PortConflict {
            field: format!("metadata.annotations[{}]", names::PORT_ANNOTATION),
            port: target.number,
        });
    }
    for (kind, c, container) in every_container(spec) {
        for (i, p) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.{kind}[{c}].ports[{i}]");
            if p.container_port == i32::from(proxy_port)
                || p.container_port == i32::from(admin_port)
            {
                return Err(InjectError::PortConflict {
                    field,
                    port: u16::try_from(p.container_port).unwrap_or_default(),
                });
            }
            if p.name.as_deref() == Some(names::ADMIN_PORT_NAME) {
                return Err(InjectError::PortNameConflict {
                    field: format!("{field}.name"),
                    name: names::ADMIN_PORT_NAME,
                });
            }
            if target.name.is_none() && p.name.as_deref() == Some(FALLBACK_PROXY_PORT_NAME) {
                return Err(InjectError::PortNameConflict {
                    field: format!("{field}.name"),
                    name: FALLBACK_PROXY_PORT_NAME,
                });
            }
        }
    }
    Ok(())
}

/// Fields of `container` (as JSON pointer tokens below the container) whose port is `name`:
/// probes and lifecycle hooks, which the kubelet resolves against the container's own ports.
fn named_port_refs(container: &Container, name: &str) -> Vec<Vec<String>> {
    let named = |p: &IntOrString| matches!(p, IntOrString::String(s) if s == name);
    let mut out = Vec::new();
    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    for (field, probe) in probes {
        let Some(probe) = probe else { continue };
        if probe.http_get.as_ref().is_some_and(|h| named(&h.port)) {
            out.push(vec![
                field.to_owned(),
                "httpGet".to_owned(),
                "port".to_owned(),
            ]);
        }
        if probe.tcp_socket.as_ref().is_some_and(|t| named(&t.port)) {
            out.push(vec![
                field.to_owned(),
                "tcpSocket".to_owned(),
                "port".to_owned(),
            ]);
        }
    }
    let hooks: [(&str, Option<&LifecycleHandler>); 2] = [
        (
            "postStart",
            container
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref()),
        ),
        (
            "preStop",
            container
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref()),
        ),
    ];
    for (field, hook) in hooks {
        let Some(hook) = hook else { continue };
        let base = ["lifecycle".to_owned(), field.to_owned()];
        if hook.http_get.as_ref().is_some_and(|h| named(&h.port)) {
            out.push([&base[..], &["httpGet".to_owned(), "port".to_owned()]].concat());
        }
        if hook.tcp_socket.as_ref().is_some_and(|t| named(&t.port)) {
            out.push([&base[..], &["tcpSocket".to_owned(), "port".to_owned()]].concat());
        }
    }
    out
}

fn port_annotation(
    value: Option<&str>,
    key: &'static str,
    default: u16,
) -> Result<u16, InjectError> {
    match value {
        None => Ok(default),
        Some(v) => {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| InjectError::InvalidAnnotation {
                    key,
                    value: v.to_owned(),
                    reason: "is not a port number between 1 and 65535",
                })
        }
    }
}

/// `volume` without what the API server fills in before admission (a ConfigMap volume's
/// `defaultMode` 0644), to compare it with one the webhook builds.
fn without_defaults(volume: &Volume) -> Volume {
    let mut volume = volume.clone();
    if let Some(config_map) = volume.config_map.as_mut()
        && config_map.default_mode == Some(0o644)
    {
        config_map.default_mode = None;
    }
    volume
}

fn policy_volume(policy: &str) -> Volume {
    Volume {
        name: names::POLICY_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::policy_configmap_name(policy),
            // The pod starts while the policy is missing; the proxy then adds no CORS headers.
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether a container's `request` is above its `limit`, which Kubernetes refuses; a side left
/// unset (or not a quantity) is never above.
pub fn above_limit(request: Option<&str>, limit: Option<&str>) -> bool {
    match (
        request.and_then(quantity_value),
        limit.and_then(quantity_value),
    ) {
        (Some(request), Some(limit)) => request > limit,
        _ => false,
    }
}

/// The value of a Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`, `+1`, `500n`) in
/// nano-units (`100m` is 100,000,000), or `None` when `v` is not one, or is negative (no
/// resource is). Exact, as Kubernetes compares quantities (`700m` equals `0.7`, which a float
/// does not say); what is finer than `1n` is rounded up, as Kubernetes does, and a value beyond
/// `u128` saturates.
pub fn quantity_value(v: &str) -> Option<u128> {
    let v = v.strip_prefix('+').unwrap_or(v);
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(split);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // `.5` and `1.` are quantities too (apimachinery's parseQuantityString); `.` is not.
    let well_formed = match number.split_once('.') {
        Some(_) => {
            (whole.is_empty() || digits(whole))
                && (fraction.is_empty() || digits(fraction))
                && !(whole.is_empty() && fraction.is_empty())
        }
        None => digits(number),
    };
    if !well_formed {
        return None;
    }
    let mantissa = whole.bytes().chain(fraction.bytes()).fold(0u128, |n, b| {
        n.saturating_mul(10).saturating_add(u128::from(b - b'0'))
    });
    // The power of ten that turns `mantissa` into nano-units.
    let fraction_digits = i64::try_from(fraction.len()).ok()?;
    let mut exponent = 9 - fraction_digits;
    let mut binary = 0;
    match suffix {
        "" => {}
        "n" => exponent -= 9,
        "u" => exponent -= 6,
        "m" => exponent -= 3,
        "k" => exponent += 3,
        "M" => exponent += 6,
        "G" => exponent += 9,
        "T" => exponent += 12,
        "P" => exponent += 15,
        "E" => exponent += 18,
        "Ki" => binary = 1,
        "Mi" => binary = 2,
        "Gi" => binary = 3,
        "Ti" => binary = 4,
        "Pi" => binary = 5,
        "Ei" => binary = 6,
        other => {
            let power = other.strip_prefix(['e', 'E'])?;
            if !digits(power.strip_prefix(['+', '-']).unwrap_or(power)) {
                return None;
            }
            exponent = exponent.checked_add(power.parse::<i64>().ok()?)?;
        }
    }
    if mantissa == 0 {
        return Some(0);
    }
    let mantissa = mantissa.saturating_mul(1024u128.pow(binary));
    let tens = |power: i64| {
        u32::try_from(power)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
    };
    Some(if exponent >= 0 {
        tens(exponent).map_or(u128::MAX, |scale| mantissa.saturating_mul(scale))
    } else {
        // Beyond 10^38 the scale overflows, and any nonzero value rounds up to 1n.
        tens(-exponent).map_or(1, |scale| mantissa.div_ceil(scale))
    })
}

/// The proxy container, restricted by the Pod Security Standard `restricted`.
fn sidecar_container(
    res: &SidecarResources,
    record: &InjectedRecord,
    log_level: &str,
    stop: Option<StopTiming>,
    native: bool,
) -> Container {
    let admin_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(record.admin_port)),
            scheme: Some("HTTP".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    // Only the quantities that are set; an empty map would be left out by the API server.
    let quantities = |cpu: &Option<String>, memory: &Option<String>| {
        let set: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(name, q)| Some((name.to_owned(), Quantity(q.clone()?))))
            .collect();
        (!set.is_empty()).then_some(set)
    };
    Container {
        name: names::SIDECAR_NAME.to_owned(),
        image: Some(record.image.clone()),
        command: Some(vec![SIDECAR_COMMAND.to_owned()]),
        args: Some(
            [
                "--policy".to_owned(),
                format!(
                    "{}/{}",
                    names::POLICY_MOUNT_PATH,
                    names::POLICY_CONFIGMAP_KEY
                ),
                "--upstream".to_owned(),
                format!("http://localhost:{}", record.upstream_port),
                "--listen".to_owned(),
                format!("[::]:{}", record.proxy_port),
                "--admin".to_owned(),
                format!("[::]:{}", record.admin_port),
                "--allow-missing-policy".to_owned(),
            ]
            .into_iter()
            .chain(stop.into_iter().flat_map(|stop| {
                let flag = |name: &str, seconds: Option<u32>| {
                    seconds.map(|s| [name.to_owned(), s.to_string()])
                };
                let delay = flag("--shutdown-delay", stop.delay);
                let drain = flag("--drain-timeout", stop.drain);
                delay.into_iter().chain(drain).flatten()
            }))
            .collect(),
        ),
        env: Some(vec![EnvVar {
            name: "CORSAIR_LOG".to_owned(),
            value: Some(log_level.to_owned()),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some(
                    record
                        .port_name
                        .clone()
                        .unwrap_or_else(|| FALLBACK_PROXY_PORT_NAME.to_owned()),
                ),
                container_port: i32::from(record.proxy_port),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(names::ADMIN_PORT_NAME.to_owned()),
                container_port: i32::from(record.admin_port),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
        ]),
        restart_policy: native.then(|| "Always".to_owned()),
        resources: Some(ResourceRequirements {
            requests: quantities(&res.cpu_request, &res.memory_request),
            limits: quantities(&res.cpu_limit, &res.memory_limit),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            // The image's nonroot user; numeric so the kubelet can check runAsNonRoot.
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // For a native sidecar the kubelet starts the app only once this succeeds.
        startup_probe: Some(admin_probe("/healthz", 1, 30)),
        liveness_probe: Some(admin_probe("/healthz", 10, 3)),
        readiness_probe: Some(admin_probe("/readyz", 5, 3)),
        volume_mounts: Some(vec![VolumeMount {
            name: names::POLICY_VOLUME.to_owned(),
            mount_path: names::POLICY_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

/// Serialises one of this module's own values (k8s-openapi types, string maps), which cannot fail.
fn value_of<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("k8s-openapi types and string maps always serialise to JSON")
}

fn ptr<I, T>(tokens: I) -> PointerBuf
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    let tokens: Vec<String> = tokens.into_iter().map(|t| t.as_ref().to_owned()).collect();
    PointerBuf::from_tokens(tokens)
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

fn remove(path: PointerBuf) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation { path })
}

#[cfg(test)]
mod tests;
