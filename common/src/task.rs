//! Work that must not stop halfway because its caller stopped waiting.
//!
//! A server drops a request's future when the caller hangs up (hyper does
//! as soon as it reads the connection's end) or when the request times
//! out. Work with several steps that must all happen or none — a write,
//! its flush, then the in-memory state that says it is durable — runs
//! through [`to_the_end`] instead of inside the request's future.

/// Runs `work` in a task of its own and waits for it: dropping the wait
/// does not stop the work, and says so in the log under `what`. The work
/// keeps the caller's tracing span and request id. `Err` says why the work
/// did not end: it panicked (logged here; the caller answers with an error
/// instead of dropping its connection), or the runtime is shutting down.
pub async fn to_the_end<T: Send + 'static>(
    what: &'static str,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    /// Logs when the caller stops waiting.
    struct Waiting(&'static str);
    impl Drop for Waiting {
        fn drop(&mut self) {
            tracing::warn!(
                what = self.0,
                "the caller stopped waiting; the work runs to its end"
            );
        }
    }
    let waiting = Waiting(what);
    // The work stays part of the request: its log lines carry the
    // request's span and id, and its calls pass the id on.
    let work = tracing::Instrument::instrument(work, tracing::Span::current());
    let joined = match crate::request_id::current() {
        Some(id) => tokio::spawn(crate::request_id::scope(id, work)).await,
        None => tokio::spawn(work).await,
    };
    std::mem::forget(waiting);
    match joined {
        Ok(result) => Ok(result),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(what, panic = %message, "the work panicked");
            Err(format!("{what} failed: {message}"))
        }
        Err(_) => Err(format!("{what} did not end: the service is shutting down")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn dropped_waits_do_not_stop_the_work() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let waiting = to_the_end("test", async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
        });
        // Dropped while the work waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), waiting)
                .await
                .is_err()
        );
        go.send(()).unwrap();
        crate::wait::poll(
            "the work to finish",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || async { done.load(Ordering::SeqCst).then_some(()) },
        )
        .await;
        assert_eq!(to_the_end("test", async { 7 }).await, Ok(7));
        let failed = to_the_end("test", async { panic!("boom") }).await;
        assert_eq!(failed, Err::<(), _>("test failed: boom".to_string()));
    }

    #[tokio::test]
    async fn the_work_keeps_the_request_id() {
        let seen = crate::request_id::scope(Arc::from("r-7"), async {
            to_the_end("test", async { crate::request_id::current() }).await
        })
        .await;
        assert_eq!(seen.ok().flatten().as_deref(), Some("r-7"));
    }
}
