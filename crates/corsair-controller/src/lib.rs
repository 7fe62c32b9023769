#![forbid(unsafe_code)]
pub mod admin;
pub mod certs;
pub mod crd;
pub mod error;
#[cfg(test)]
mod faults;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod reconcile;
pub mod runtime;
pub mod webhook;

pub use error::{Error, Result};
