//! Logging for every long-running process: `tracing` to stderr, text or JSON, with a
//! `RUST_LOG`-style filter.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags, flattened into each command that runs a server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LogArgs {
    /// Log format.
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "CORSAIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)
    )]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax: a level (`info`, `debug`) or per-target directives
    /// (`info,corsair_proxy=debug`).
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "CORSAIR_LOG", default_value = "info")
    )]
    pub log_level: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter does not parse; names the flag and the directive.
    #[error("--log-level {directive:?}: {error}")]
    Filter {
        directive: String,
        error: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the logger: {0}")]
    Install(Box<dyn std::error::Error + Send + Sync>),
}

/// The filter of `args`, or an error naming the directive that did not parse.
pub fn filter(args: &LogArgs) -> Result<EnvFilter, LoggingError> {
    parse_filter(&args.log_level)
}

fn parse_filter(directive: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(directive).map_err(|error| LoggingError::Filter {
        directive: directive.to_owned(),
        error,
    })
}

/// Whether `directive` is a filter the logger takes: checked where a process hands one to
/// another (the webhook, for the sidecar it injects), since a bad one stops that process at start.
pub fn check_filter(directive: &str) -> Result<(), LoggingError> {
    parse_filter(directive).map(drop)
}

/// Installs the global subscriber.
pub fn init(args: &LogArgs) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(args)?)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a log collector's file.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(LoggingError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_names_the_flag_and_the_directive() {
        let args = LogArgs {
            log_level: "info,corsair=loud".to_owned(),
            ..LogArgs::default()
        };
        let err = filter(&args).expect_err("`loud` is no level");
        let message = err.to_string();
        assert!(
            message.starts_with("--log-level \"info,corsair=loud\": "),
            "{message}"
        );
    }

    #[test]
    fn levels_and_directives_parse() {
        for directive in ["info", "warn,corsair_proxy=debug", "off"] {
            let args = LogArgs {
                log_level: directive.to_owned(),
                ..LogArgs::default()
            };
            assert!(filter(&args).is_ok(), "{directive}");
        }
    }
}
