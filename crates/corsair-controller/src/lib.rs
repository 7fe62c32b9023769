#![forbid(unsafe_code)]
//! The operator: the CorsPolicy CRD type and the admission webhooks' decisions, and with the
//! `runtime` feature (the default) the reconcilers, leader election, the webhooks' certificates
//! and HTTPS server.
#[cfg(feature = "runtime")]
pub mod admin;
#[cfg(feature = "runtime")]
pub mod certs;
pub mod crd;
pub mod document;
#[cfg(feature = "runtime")]
pub mod error;
#[cfg(all(test, feature = "runtime"))]
mod faults;
#[cfg(any(all(test, feature = "runtime"), feature = "fixtures"))]
pub mod fixtures;
#[cfg(feature = "runtime")]
pub mod lease;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod names;
#[cfg(feature = "runtime")]
pub mod reconcile;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod webhook;

#[cfg(feature = "runtime")]
pub use error::{Error, Result};
