//! Waiting for a condition with a deadline, the one way the tests (and
//! anything else) wait: poll, and on timeout fail with a message that names
//! what was awaited and for how long. Never a bare sleep.
//!
//! [`wait_until`] is the usual call; [`poll`] waits for a value rather than a
//! yes; the `try_` forms return [`TimedOut`] instead of panicking, for a
//! caller that has something to add (a page's text, a child to kill). The
//! `_blocking` forms do the same for synchronous code.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`wait_until_blocking`] look again: often
/// enough that a test does not idle, rarely enough not to load the machine.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// A wait that ran out of time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}")]
pub struct TimedOut {
    pub what: String,
    pub after: Duration,
}

/// Runs `probe` every `every` until it returns `Some`, or fails once
/// `timeout` has passed (the probe runs at least once).
pub async fn try_poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// [`try_poll`], panicking with the [`TimedOut`] message.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, every: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_poll(what, timeout, every, probe)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `cond` every [`POLL_EVERY`] until it holds; panics naming `what`
/// and `timeout` when it does not hold in time.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(what, timeout, POLL_EVERY, || {
        let holds = cond();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// [`try_poll`] for synchronous code: the thread sleeps between probes.
pub fn try_poll_blocking<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(every);
    }
}

/// [`wait_until`] for synchronous code.
pub fn wait_until_blocking(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    try_poll_blocking(what, timeout, POLL_EVERY, || cond().then_some(()))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let mut calls = 0;
        let n = poll(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                calls += 1;
                let n = calls;
                async move { (n >= 3).then_some(n) }
            },
        )
        .await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn names_what_it_waited_for_when_time_runs_out() {
        let e = try_poll::<(), _, _>(
            "a condition that never holds",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { None },
        )
        .await
        .expect_err("never holds");
        assert_eq!(
            e.to_string(),
            "timed out after 30ms waiting for a condition that never holds"
        );
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for nothing")]
    fn the_blocking_form_panics_the_same_way() {
        wait_until_blocking("nothing", Duration::from_millis(10), || false);
    }
}
