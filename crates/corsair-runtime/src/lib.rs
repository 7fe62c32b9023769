//! What every long-running Corsair process shares, so that `corsair proxy`, `corsair-proxy`,
//! `corsair webhook`, `corsair demo` and `corsair controller` behave alike:
//!
//! - [`admin`]: the one admin HTTP server (`/healthz`, `/readyz` from a readiness flag the
//!   caller sets, `/metrics` from a prometheus-client registry, extra routes such as `/policy`);
//! - [`shutdown`]: SIGTERM/SIGINT as a future or a `CancellationToken`;
//! - [`logging`]: `tracing` to stderr as text or JSON, with a `RUST_LOG`-style filter;
//! - [`listen`]: listening sockets, `[::]` taking IPv4 and IPv6 clients alike;
//! - [`response`]: small plain responses;
//! - `testing` (feature `test-util`): a raw HTTP/1.1 GET and a "still listening?" check for
//!   the tests of servers built on it.
//!
//! No kube here: the slim sidecar binary links this crate.
#![forbid(unsafe_code)]

pub mod admin;
pub mod listen;
pub mod logging;
pub mod response;
pub mod shutdown;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use admin::{Admin, MetricsSource, Readiness, ReadyFlag};
pub use response::{response, text};
pub use shutdown::{ShutdownSignals, Signal, SignalError};
