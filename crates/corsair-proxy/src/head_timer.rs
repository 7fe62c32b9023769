//! hyper's HTTP/1 header read timeout, kept per connection without a runtime timer per request.
//!
//! hyper arms its header read timer for every message head it waits for (the next request on a
//! kept-alive connection included) and drops it once the head is parsed. With tokio's timer that
//! is a boxed `Sleep` registered in and removed from the runtime's timer wheel for every request:
//! about 1.5k instructions per request (`docs/benchmarks.md`). Here hyper's sleeps only record
//! their deadline in the connection's [`HeadDeadline`]; the connection's own loop holds the one
//! runtime timer, armed at the recorded deadline and re-armed only when it fires, and when a
//! deadline has passed it polls the connection, so hyper polls its sleep, finds it expired and
//! ends the connection as it would with tokio's timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// No deadline recorded.
const NONE: u64 = u64::MAX;

/// The deadline of the head a connection is waiting for, if any.
#[derive(Debug)]
pub(crate) struct HeadDeadline {
    opened: Instant,
    /// Milliseconds since `opened`, rounded up so that it never comes early; [`NONE`] when no
    /// head is awaited.
    at_ms: AtomicU64,
}

impl HeadDeadline {
    pub(crate) fn new() -> Arc<HeadDeadline> {
        Arc::new(HeadDeadline {
            opened: Instant::now(),
            at_ms: AtomicU64::new(NONE),
        })
    }

    fn record(&self, deadline: Instant) {
        let since = deadline.saturating_duration_since(self.opened);
        let ms = u64::try_from(since.as_nanos().div_ceil(1_000_000))
            .unwrap_or(NONE - 1)
            .min(NONE - 1);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.at_ms.store(NONE, Ordering::Relaxed);
    }

    fn recorded(&self) -> Option<Instant> {
        match self.at_ms.load(Ordering::Relaxed) {
            NONE => None,
            ms => Some(self.opened + Duration::from_millis(ms)),
        }
    }

    /// Completes once a recorded deadline has passed, and forgets it, so that it fires once.
    /// With nothing recorded it looks again every `every` (the header read timeout): a head
    /// awaited from just after a look has a deadline a whole timeout later, so the next look
    /// always comes before that deadline.
    pub(crate) async fn passed(&self, every: Duration) {
        loop {
            let now = Instant::now();
            let wake = match self.recorded() {
                Some(deadline) if deadline <= now => {
                    self.clear();
                    return;
                }
                Some(deadline) => deadline,
                None => now + every,
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// The HTTP/1 timer given to hyper for one connection.
#[derive(Debug, Clone)]
pub(crate) struct HeadTimer(pub(crate) Arc<HeadDeadline>);

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            deadline,
            shared: Arc::clone(&self.0),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut ours) => ours.deadline = new_deadline,
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// Ready once its deadline has passed. It never wakes anything itself: the connection's loop
/// wakes the task at the recorded deadline ([`HeadDeadline::passed`]).
struct HeadSleep {
    deadline: Instant,
    shared: Arc<HeadDeadline>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        self.shared.record(self.deadline);
        Poll::Pending
    }
}

impl Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        self.shared.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending sleep records its deadline, never earlier; dropping it clears it.
    #[tokio::test]
    async fn a_pending_sleep_records_its_deadline_until_dropped() {
        let shared = HeadDeadline::new();
        let timer = HeadTimer(Arc::clone(&shared));
        let deadline = Instant::now() + Duration::from_micros(1_500_300);
        let mut sleep = timer.sleep_until(deadline);
        assert_eq!(shared.recorded(), None, "recorded before it was polled");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let recorded = shared.recorded().expect("recorded once polled");
        assert!(
            recorded >= deadline,
            "{recorded:?} comes before {deadline:?}"
        );
        assert!(recorded < deadline + Duration::from_millis(2));
        drop(sleep);
        assert_eq!(shared.recorded(), None);
    }

    /// `reset` moves hyper's sleep rather than making a new one, and `passed` fires at the
    /// recorded deadline, once.
    #[tokio::test]
    async fn passed_fires_at_the_recorded_deadline_once() {
        let shared = HeadDeadline::new();
        let timer = HeadTimer(Arc::clone(&shared));
        let start = Instant::now();
        let mut sleep = timer.sleep_until(start + Duration::from_secs(60));
        timer.reset(&mut sleep, start + Duration::from_millis(80));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        shared.passed(Duration::from_secs(60)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(80) && took < Duration::from_secs(2),
            "fired after {took:?}"
        );
        assert!(
            sleep.as_mut().poll(&mut cx).is_ready(),
            "hyper's sleep expired"
        );
        assert_eq!(shared.recorded(), None, "a deadline fires once");
    }
}
