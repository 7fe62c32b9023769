//! Logging for every long-running subcommand: `tracing` to stderr, text or JSON, with a
//! `RUST_LOG`-style filter.

use std::io::IsTerminal as _;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags, flattened into each subcommand that runs a server.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "CORSAIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax: a level (`info`, `debug`) or per-target directives
    /// (`info,corsair_proxy=debug`).
    #[arg(long, env = "CORSAIR_LOG", default_value = "info")]
    pub log_level: String,
}

/// Installs the global subscriber. Errors name the directive that did not parse.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|err| anyhow::anyhow!("--log-level {:?}: {err}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a log collector's file.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("cannot install the logger: {err}"))
}
