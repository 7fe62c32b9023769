//! hyper's executor for HTTP/2 streams: each stream's task ends once it made no progress for
//! the idle timeout.
//!
//! A client connection that moves no byte for `--idle-timeout` is dropped (`server.rs`). Over
//! HTTP/2 that rule cannot see a stalled stream: a client that gives a stream no flow-control
//! window, and sends a PING now and then, keeps its connection busy while that stream, its
//! upstream connection and the application's work wait for good. hyper runs every stream on a
//! task of its own, spawned here, so the rule is kept per stream as well: a task that was not
//! woken for the idle timeout is dropped, which resets its stream (`CANCEL`), and counted in
//! `corsair_proxy_http2_streams_stalled_total`. Each wake also
//! counts as activity of the stream's connection, whose own bytes do not (`server.rs`).
//!
//! hyper also spawns the send half of an HTTP/2 `CONNECT` tunnel here, which would then end
//! after an idle timeout without upstream bytes; the proxy answers `CONNECT` 501 and offers no
//! tunnel, so none is ever spawned.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use crate::server::Activity;

/// Spawns hyper's HTTP/2 stream tasks on the current runtime, each with its stall deadline.
#[derive(Clone)]
pub(crate) struct StreamExec {
    pub(crate) idle_timeout: Duration,
    /// The connection whose streams these are (none in the builder HTTP/1 connections use).
    pub(crate) activity: Option<Activity>,
    /// `corsair_proxy_http2_streams_stalled_total`.
    pub(crate) stalled: Counter,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Stalls {
            task,
            deadline: tokio::time::sleep(self.idle_timeout),
            idle_timeout: self.idle_timeout,
            activity: self.activity.clone(),
            stalled: self.stalled.clone(),
        });
    }
}

pin_project! {
    /// A task that completes when its future does, or when it went `idle_timeout` without
    /// a wake of its own.
    struct Stalls<F> {
        #[pin]
        task: F,
        #[pin]
        deadline: Sleep,
        idle_timeout: Duration,
        activity: Option<Activity>,
        stalled: Counter,
    }
}

impl<F: Future<Output = ()>> Future for Stalls<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // The deadline moves on at every poll, so a fired one means that nothing but the timer
        // woke the task since: no frame, no window, no upstream byte, no timer of the handler.
        if this.deadline.is_elapsed() {
            tracing::debug!(
                "resetting an HTTP/2 stream that made no progress for the idle timeout"
            );
            this.stalled.inc();
            return Poll::Ready(());
        }
        let now = Instant::now();
        if let Some(activity) = this.activity {
            activity.touch_at(now);
        }
        if this.task.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.deadline.as_mut().reset(now + *this.idle_timeout);
        // Registers this task's waker with the deadline as it now stands (pending).
        let _ = this.deadline.poll(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use hyper::rt::Executor;
    use tokio::sync::Notify;

    use super::*;

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A task woken more often than the timeout runs on past it; one left without a wake is
    /// dropped once the timeout passes, not before.
    #[tokio::test(start_paused = true)]
    async fn a_task_is_dropped_only_after_the_timeout_without_a_wake() {
        let exec = StreamExec {
            idle_timeout: Duration::from_secs(10),
            activity: None,
            stalled: Counter::default(),
        };
        let nudge = Arc::new(Notify::new());
        let dropped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        {
            let (nudge, guard, finished) =
                (nudge.clone(), Dropped(dropped.clone()), finished.clone());
            exec.execute(async move {
                let _guard = guard;
                for _ in 0..5 {
                    nudge.notified().await;
                }
                // Then nothing wakes it.
                std::future::pending::<()>().await;
                finished.store(true, Ordering::SeqCst);
            });
        }
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            nudge.notify_one();
            assert!(
                !dropped.load(Ordering::SeqCst),
                "dropped while it was woken"
            );
        }
        // 40 s in, woken every 8 s; now left alone.
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            !dropped.load(Ordering::SeqCst),
            "dropped before the timeout"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "still running 11 s after its last wake"
        );
        assert!(!finished.load(Ordering::SeqCst));
    }
}
