#![forbid(unsafe_code)]
pub mod names;
