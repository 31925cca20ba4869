//! Work that must not stop halfway because its caller stopped waiting.
//!
//! A server drops a request's future when the caller hangs up (hyper does
//! as soon as it reads the connection's end) or when the request times
//! out. Work with several steps that must all happen or none — a write,
//! its flush, then the in-memory state that says it is durable — runs
//! through [`to_the_end`] instead of inside the request's future.
//!
//! Also here: the runtime of the services (one worker), and [`blocking`]
//! for what may block one of its threads.

/// Runs `work` in a task of its own and waits for it: dropping the wait
/// does not stop the work, and says so in the log under `what`. The work
/// keeps the caller's request id. `Err` says why the work
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
    // request's id, and its calls pass the id on.
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

/// The variable that sets a service's worker threads (tokio's own name).
pub const WORKERS_ENV: &str = "TOKIO_WORKER_THREADS";

/// The runtime of a service (the catalog, an order replica, a front-end):
/// one worker thread unless [`WORKERS_ENV`] says otherwise.
///
/// A storage service's write path is serial (one sequencer, one append at
/// a time) and sled flushes on threads of its own, so a second worker only
/// moves tasks between threads: with one, the cluster spent 9-10% less CPU
/// per trade and made 8% more trades at 64 connections. A front-end with
/// two workers on this 2-core machine was preempted 0.16-0.23 times per
/// cached lookup; with one, it spent 4-6 µs (14-20%) less CPU per trade,
/// and cached lookups stayed within their run-to-run spread
/// (docs/PERFORMANCE.md, One worker for the front-end too).
/// What may block for long runs through [`blocking`], which lends the
/// worker's other tasks a thread meanwhile.
pub fn service_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os(WORKERS_ENV).is_none() {
        builder.worker_threads(1);
    }
    builder.enable_all().build()
}

/// Runs a service's `main` to its end on [`service_runtime`].
pub fn on_service_runtime<T>(main: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    service_runtime()?.block_on(main)
}

/// Runs `f`, which may block its thread for long (opening a database,
/// file I/O), without stopping the runtime's other tasks: on a
/// multi-thread runtime they move to another thread meanwhile
/// (`block_in_place`); elsewhere (a test's single-thread runtime, no
/// runtime) `f` simply runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
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
        let request = crate::request_id::test_request("r-7", axum::http::Method::POST, "/x");
        let seen = crate::request_id::scope(request, async {
            to_the_end("test", async { crate::request_id::current() }).await
        })
        .await;
        let seen = seen.ok().flatten().expect("the request in the work");
        assert_eq!(seen.id(), "r-7");
    }

    /// On a service's one-worker runtime, a task blocked in [`blocking`]
    /// does not stop the others: here the blocked task waits for one
    /// spawned after it, which could not run on the only worker otherwise.
    #[test]
    fn a_blocked_task_lets_the_others_run() {
        let runtime = if std::env::var_os(WORKERS_ENV).is_none() {
            service_runtime().unwrap()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        };
        assert_eq!(runtime.metrics().num_workers(), 1);
        let answered = runtime.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (started, on_worker) = tokio::sync::oneshot::channel();
            let blocked = tokio::spawn(async move {
                let _ = started.send(());
                blocking(|| rx.recv_timeout(Duration::from_secs(5)).is_ok())
            });
            // The sender is spawned only once the blocked task holds the worker.
            on_worker.await.unwrap();
            tokio::spawn(async move {
                let _ = tx.send(());
            });
            blocked.await.unwrap()
        });
        assert!(
            answered,
            "the spawned task never ran while the other blocked"
        );
    }

    #[tokio::test]
    async fn blocking_runs_in_place_on_a_single_thread_runtime() {
        assert_eq!(blocking(|| 7), 7);
        assert_eq!(std::thread::spawn(|| blocking(|| 8)).join().unwrap(), 8);
    }
}
