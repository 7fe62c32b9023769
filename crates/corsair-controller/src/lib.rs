#![forbid(unsafe_code)]
pub mod crd;
pub mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod metrics;
pub mod names;
pub mod reconcile;

pub use error::{Error, Result};
pub mod webhook;
