//! The active policy: loaded from the policy file, compiled once, swapped atomically on reload
//! and read per request so that connections already open see a new policy on their next request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use corsair_policy::{CorsPolicySpec, Engine, LoadError, Mode, PolicyDocument};

/// Why a policy file could not become the active policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "policy file {} does not exist (pass --allow-missing-policy to start without it)",
        path.display()
    )]
    Missing { path: PathBuf },
    // The cause is in the message, not a `source()`: a chain walk would print it twice, and the
    // message alone is the reason `/policy` and the reloader's log give.
    #[error("cannot read policy file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("policy file {} is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("policy file {}: {cause}", path.display())]
    Load { path: PathBuf, cause: LoadError },
    /// The spec fails validation; `errors` lists every error with its field path.
    #[error("policy file {} is invalid: {}", path.display(), errors.join("; "))]
    Invalid { path: PathBuf, errors: Vec<String> },
    /// The built-in "allow no origin" policy did not compile: a bug, reported rather than hidden.
    #[error("the built-in deny-all policy does not compile: {0}")]
    DenyAll(String),
}

/// A compiled policy and where it came from.
#[derive(Debug)]
pub struct ActivePolicy {
    pub engine: Engine,
    /// `None` while the policy file does not exist (`--allow-missing-policy`): nothing is allowed.
    pub document: Option<PolicyDocument>,
    /// The file content the policy was compiled from, to recognise an unchanged file.
    pub raw: Option<Vec<u8>>,
}

impl ActivePolicy {
    /// `metadata.generation` of the active document; 0 when there is none or it has none.
    pub fn generation(&self) -> i64 {
        self.document
            .as_ref()
            .and_then(|d| d.metadata.generation)
            .unwrap_or(0)
    }

    /// Parses and compiles the content of `path`. Lint warnings are logged, errors refuse it.
    pub fn parse(path: &Path, raw: Vec<u8>) -> Result<ActivePolicy, PolicyError> {
        let text = std::str::from_utf8(&raw).map_err(|_| PolicyError::NotUtf8 {
            path: path.to_owned(),
        })?;
        let document = corsair_policy::load_document(text).map_err(|cause| PolicyError::Load {
            path: path.to_owned(),
            cause,
        })?;
        let (engine, report) =
            Engine::compile(&document.spec).map_err(|report| PolicyError::Invalid {
                path: path.to_owned(),
                errors: report.errors().map(ToString::to_string).collect(),
            })?;
        for warning in report.warnings() {
            tracing::warn!(policy = %path.display(), code = warning.code, "{warning}");
        }
        Ok(ActivePolicy {
            engine,
            document: Some(document),
            raw: Some(raw),
        })
    }

    /// What runs while the policy file is missing: Enforce mode, no origin allowed, so upstream
    /// `Access-Control-*` headers are stripped and preflights are refused.
    pub fn deny_all() -> Result<ActivePolicy, PolicyError> {
        let spec = CorsPolicySpec {
            // An empty character class: a regex that matches no string at all.
            allow_origin_regexes: Some(vec![r"[^\s\S]".to_owned()]),
            mode: Some(Mode::Enforce),
            ..CorsPolicySpec::default()
        };
        let (engine, _) = Engine::compile(&spec).map_err(|report| {
            PolicyError::DenyAll(
                report
                    .errors()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        Ok(ActivePolicy {
            engine,
            document: None,
            raw: None,
        })
    }
}

/// How a file that cannot be read is refused, at start and on reload: one wording, so the
/// reloader can tell the error it inherits from the start from a new one.
const UNREADABLE: &str = "cannot read the file: ";

/// The refusal's text for a read error whose message is `error`.
pub(crate) fn unreadable(error: &str) -> String {
    format!("{UNREADABLE}{error}")
}

/// The read error a refusal from [`unreadable`] carries, if that is what it is.
pub(crate) fn unreadable_error(refused: &str) -> Option<&str> {
    refused.strip_prefix(UNREADABLE)
}

/// The policy currently enforced, swapped without locks.
#[derive(Debug)]
pub struct PolicyStore {
    path: PathBuf,
    /// A missing file means "allow no origin" (at start and when it is removed later) rather
    /// than an error at start and "keep the last good policy" later.
    allow_missing: bool,
    active: ArcSwap<ActivePolicy>,
    /// Why the file on disk is not the active policy, while it is one this proxy refused.
    refused: std::sync::Mutex<Option<Arc<str>>>,
}

impl PolicyStore {
    /// Loads `path`; a missing file is an error unless `allow_missing`, and so is one that does
    /// not load or cannot be read. With `allow_missing` (the injected sidecar's) all three mean
    /// "allow no origin": a
    /// file this proxy cannot read, such as one a newer controller wrote with a field an older
    /// sidecar does not know, would otherwise stop the pod at every start, where a reload keeps
    /// the last good policy instead.
    pub fn load(path: &Path, allow_missing: bool) -> Result<PolicyStore, PolicyError> {
        let mut refused = None;
        let active = match std::fs::read(path) {
            Ok(raw) if allow_missing => match ActivePolicy::parse(path, raw.clone()) {
                Ok(policy) => policy,
                Err(err) => {
                    refused = Some(Arc::from(err.to_string()));
                    tracing::error!(
                        error = %err,
                        "the policy file does not load; allowing no origin until one that does \
                         appears (a sidecar older than the controller that wrote it?)"
                    );
                    // Its bytes count as seen, so the reloader waits for new ones.
                    ActivePolicy {
                        raw: Some(raw),
                        ..ActivePolicy::deny_all()?
                    }
                }
            },
            Ok(raw) => ActivePolicy::parse(path, raw)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && allow_missing => {
                tracing::warn!(
                    policy = %path.display(),
                    "policy file does not exist yet; allowing no origin until it appears"
                );
                ActivePolicy::deny_all()?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(PolicyError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(err) if allow_missing => {
                // As a file that does not load: a pod that cannot read its policy (a volume
                // mounted with the wrong mode, a directory in its place) allows no origin and
                // says why, rather than failing every start until someone reads its logs.
                tracing::error!(
                    policy = %path.display(),
                    error = %err,
                    "cannot read the policy file; allowing no origin until it can be read"
                );
                refused = Some(Arc::from(unreadable(&err.to_string())));
                ActivePolicy::deny_all()?
            }
            Err(cause) => {
                return Err(PolicyError::Read {
                    path: path.to_owned(),
                    cause,
                });
            }
        };
        Ok(PolicyStore {
            path: path.to_owned(),
            allow_missing,
            active: ArcSwap::from_pointee(active),
            refused: std::sync::Mutex::new(refused),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn allows_missing(&self) -> bool {
        self.allow_missing
    }

    /// The policy to apply to the next request.
    pub fn current(&self) -> Arc<ActivePolicy> {
        self.active.load_full()
    }

    /// Makes `policy` the active one; the file on disk is then no longer refused.
    pub fn replace(&self, policy: ActivePolicy) {
        self.active.store(Arc::new(policy));
        self.set_refused(None);
    }

    /// Why the file on disk was refused, while the active policy is not that file.
    pub fn refused(&self) -> Option<Arc<str>> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_refused(&self, why: Option<Arc<str>>) {
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }
}
