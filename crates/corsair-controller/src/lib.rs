#![forbid(unsafe_code)]
pub mod names;
pub mod webhook;
