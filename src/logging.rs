//! Logging for every long-running subcommand: the setup of `corsair-runtime`, shared with the
//! slim `corsair-proxy` binary.

pub use corsair_runtime::logging::{LogArgs, init};
