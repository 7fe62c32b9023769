//! One module per subcommand: each has `Args` (clap) and `run`.

pub mod check;
pub mod controller;
pub mod crd;
pub mod demo;
pub mod explain;
pub mod import;
pub mod proxy;
pub mod sidecar;
pub mod webhook;
