//! The shutdown signal: SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C).

use std::fmt;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the kubelet (or `kill`) asks for a graceful stop.
    Terminate,
    /// SIGINT: Ctrl-C at a terminal.
    Interrupt,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// A signal handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {signal}: {error}")]
pub struct SignalError {
    /// `SIGTERM` or `SIGINT`.
    pub signal: Signal,
    /// What the OS said.
    pub error: std::io::Error,
}

/// SIGTERM and SIGINT handlers, installed by [`ShutdownSignals::install`].
///
/// Install them before the process announces that it serves: a signal that arrives between
/// installing and awaiting is kept, not lost, and does not kill the process.
#[derive(Debug)]
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs both handlers. Must be called inside a tokio runtime.
    pub fn install() -> Result<ShutdownSignals, SignalError> {
        let listen = |kind: SignalKind, name: Signal| {
            signal(kind).map_err(|error| SignalError {
                signal: name,
                error,
            })
        };
        Ok(ShutdownSignals {
            term: listen(SignalKind::terminate(), Signal::Terminate)?,
            int: listen(SignalKind::interrupt(), Signal::Interrupt)?,
        })
    }

    /// Completes at the next SIGTERM or SIGINT, which it logs: a second one can cut a graceful
    /// stop short.
    pub async fn recv(&mut self) -> Signal {
        let signal = tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        };
        tracing::info!("{signal} received");
        signal
    }

    /// A token cancelled at the first SIGTERM or SIGINT (a task waits for it).
    pub fn into_token(mut self) -> CancellationToken {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            self.recv().await;
            cancel.cancel();
        });
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status()
            .expect("the `kill` command (procps)");
        assert!(status.success(), "kill {signal}: {status}");
    }

    /// Sends real signals to this test process: the handlers are installed first, so neither
    /// kills it. One test, so that no other test's signal is received here.
    #[tokio::test]
    async fn sigint_and_sigterm_are_received() {
        let mut signals = ShutdownSignals::install().expect("install");
        kill("-INT");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), signals.recv()).await;
        assert_eq!(got.ok(), Some(Signal::Interrupt));

        let token = ShutdownSignals::install().expect("install").into_token();
        assert!(!token.is_cancelled());
        kill("-TERM");
        let cancelled =
            tokio::time::timeout(std::time::Duration::from_secs(10), token.cancelled()).await;
        assert!(cancelled.is_ok(), "SIGTERM cancels the token");
        // The first handlers still listen: that SIGTERM is their second signal.
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), signals.recv()).await;
        assert_eq!(got.ok(), Some(Signal::Terminate));
    }

    #[test]
    fn signals_are_named_as_in_kill() {
        assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
        assert_eq!(Signal::Interrupt.to_string(), "SIGINT");
    }
}
