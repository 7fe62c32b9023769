//! A future polled only when it was woken, not whenever the task that holds it is.
//!
//! A connection's task is woken for every read and write, and a `select!` polls all its
//! branches each time. The branches a connection waits on besides hyper (shutdown, abort, the
//! idle timeout, the header read deadline) fire rarely, yet polling them costs a mutex and a
//! timer check each: about 0.5k instructions per request (`docs/benchmarks.md`). Wrapped in
//! [`OnWake`], they get a waker of their own that marks them woken before waking the task, and
//! the task polls them only then.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Polls its future only when the future's own waker fired since the last poll.
pub(crate) struct OnWake<F> {
    future: Pin<Box<F>>,
    flag: Arc<Flag>,
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    /// The task holding the future, woken after `woken` is set.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> OnWake<F> {
    pub(crate) fn new(future: F) -> OnWake<F> {
        // Woken to start with: a future must be polled once to register its wakers.
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        OnWake {
            future: Box::pin(future),
            waker: Waker::from(Arc::clone(&flag)),
            flag,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake in between is then seen by the next poll.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut inner = Context::from_waker(&this.waker);
        this.future.as_mut().poll(&mut inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Counts its polls; ready once `ready` is set.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// Polling the holder again does not poll the future; its own waker does.
    #[test]
    fn the_future_is_polled_once_then_only_when_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let mut on_wake = OnWake::new(Counted {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
        });
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut on_wake).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled without a wake");
        ready.store(true, Ordering::SeqCst);
        assert!(Pin::new(&mut on_wake).poll(&mut cx).is_pending());
        on_wake.waker.wake_by_ref();
        assert!(Pin::new(&mut on_wake).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    /// A timer inside wakes the holding task, which then completes: in time, where a lost wake
    /// would leave it pending.
    #[tokio::test]
    async fn a_timer_inside_wakes_the_task() {
        let woken = tokio::time::timeout(
            Duration::from_secs(5),
            OnWake::new(tokio::time::sleep(Duration::from_millis(50))),
        )
        .await;
        assert!(woken.is_ok(), "the timer's wake did not reach the task");
    }
}
