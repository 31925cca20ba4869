//! Whether this replica can do its job — commit trades now, or take over
//! and commit them — as `/health` reports it (`ready`, `reason`). A replica
//! is not ready when it has not reached the catalog for a while (its own
//! probe, every [`PROBE_INTERVAL`]), when its commits have been failing for
//! longer than [`COMMIT_FAILING_BOUND`], or when its storage failed. The
//! front-end moves the leadership away from a replica that is not ready
//! when another one is, and does not pick it again while it stays so.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often every replica checks that it reaches the catalog.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Without a successful probe for this long a replica is not ready: three
/// probes in a row failed, so it is not one lost packet.
pub const CATALOG_SILENCE_BOUND: Duration = Duration::from_millis(1500);
/// Commits failing for this long make the leader not ready, whatever the
/// probe says (a catalog that answers `/health` but not `/apply`).
pub const COMMIT_FAILING_BOUND: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// The last probe that reached the catalog.
    catalog_seen: Option<Instant>,
    /// Why the last probe failed, while it fails.
    catalog_error: Option<String>,
    /// Since when commits fail, and why.
    commits_failing: Option<(Instant, String)>,
}

#[derive(Default)]
pub struct Readiness {
    state: Mutex<State>,
}

impl Readiness {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("readiness lock is never poisoned"))
    }

    /// `Err(reason)` while this replica cannot commit.
    pub fn verdict(&self) -> Result<(), String> {
        self.with(|s| {
            let now = Instant::now();
            if let Some((since, why)) = &s.commits_failing
                && now.duration_since(*since) >= COMMIT_FAILING_BOUND
            {
                return Err(format!(
                    "commits have failed for {} ms: {why}",
                    now.duration_since(*since).as_millis()
                ));
            }
            match s.catalog_seen {
                Some(at) if now.duration_since(at) < CATALOG_SILENCE_BOUND => Ok(()),
                // The first probe is still under way: nothing speaks against
                // this replica yet (a front-end starting with the cluster
                // must still pick the highest id).
                None if s.catalog_error.is_none() => Ok(()),
                seen => Err(format!(
                    "no usable answer from the catalog {}: {}",
                    seen.map_or("since start".to_string(), |at| format!(
                        "for {} ms",
                        now.duration_since(at).as_millis()
                    )),
                    s.catalog_error.as_deref().unwrap_or("no answer yet")
                )),
            }
        })
    }

    pub fn commit_succeeded(&self) {
        self.with(|s| {
            s.commits_failing = None;
            s.catalog_seen = Some(Instant::now());
        });
    }

    /// Forgets failed commits: they speak of a leadership that ended (a
    /// follower commits nothing, and a new leadership starts afresh).
    pub fn leadership_changed(&self) {
        self.with(|s| s.commits_failing = None);
    }

    pub fn commit_failed(&self, why: &str) {
        self.with(|s| {
            if s.commits_failing.is_none() {
                s.commits_failing = Some((Instant::now(), why.to_string()));
            }
        });
    }

    /// Records what a probe of the catalog found.
    pub fn probed(&self, answer: Result<(), String>) {
        self.with(|s| match answer {
            Ok(()) => {
                s.catalog_seen = Some(Instant::now());
                s.catalog_error = None;
            }
            Err(e) => s.catalog_error = Some(e),
        });
    }
}
