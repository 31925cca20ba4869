//! The closed segments an archive keeps open after a read, at most
//! [`KEPT`], each closed again once it has gone unread for a while.
//!
//! A catch-up reads a segment page by page, so keeping the last ones open
//! saves reopening one per page. But an open segment holds sled's page
//! table, page cache and buffers (about 8 MiB of heap each), and a replica
//! that had served one catch-up kept two open for good: they were a fifth
//! of a follower's live heap at the end of a 500,000-order fill
//! (docs/PERFORMANCE.md). A thread of the archive's own closes the ones
//! unread for [`IDLE`]; it runs only while something is kept open.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::storage::StoreError;

/// Closed segments kept open after a read (the catch-up of a replica reads
/// them in order; a lookup by number reads one).
const KEPT: usize = 2;
/// How long a kept segment may go unread before it is closed.
pub(super) const IDLE: Duration = Duration::from_secs(10);

pub(super) struct KeptOpen {
    inner: Arc<Mutex<Kept>>,
    idle: Duration,
}

#[derive(Default)]
struct Kept {
    /// The segment's first number, its database, when it was last read;
    /// the most recently read first.
    list: VecDeque<(u64, sled::Db, Instant)>,
    /// Whether the thread that closes idle segments runs.
    sweeping: bool,
}

impl KeptOpen {
    pub(super) fn new(idle: Duration) -> KeptOpen {
        KeptOpen {
            inner: Arc::default(),
            idle,
        }
    }

    /// The segment starting at `first` if it is kept open and no opening
    /// is under way (nothing waits).
    pub(super) fn try_get(&self, first: u64) -> Option<sled::Db> {
        let mut kept = self.inner.try_lock().ok()?;
        kept.take(first)
    }

    /// The segment starting at `first`: kept open, or opened by `open`
    /// (one opening at a time), and kept open from now on.
    pub(super) fn get_or_open(
        &self,
        first: u64,
        open: impl FnOnce() -> Result<sled::Db, StoreError>,
    ) -> Result<sled::Db, StoreError> {
        let mut kept = self.lock();
        if let Some(db) = kept.take(first) {
            return Ok(db);
        }
        let db = open()?;
        kept.list.push_front((first, db.clone(), Instant::now()));
        let keep = kept.list.len().min(KEPT);
        let dropped = kept.list.split_off(keep);
        if !kept.sweeping {
            kept.sweeping = self.sweep().is_ok();
        }
        drop(kept);
        drop(dropped);
        Ok(db)
    }

    /// How many are open.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().list.len()
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the thread that closes the segments unread for `idle`; it
    /// stops when none is left open, or the archive is gone.
    fn sweep(&self) -> std::io::Result<()> {
        let (inner, idle) = (Arc::downgrade(&self.inner), self.idle);
        let spawned = std::thread::Builder::new()
            .name("segments-idle".into())
            .spawn(move || sweep_until_empty(&inner, idle));
        if let Err(e) = &spawned {
            tracing::warn!(error = %e, "segments read stay open: no thread to close them");
        }
        spawned.map(|_| ())
    }
}

impl Kept {
    /// Takes the segment starting at `first` out of the list and puts it
    /// back in front, read now.
    fn take(&mut self, first: u64) -> Option<sled::Db> {
        let i = self.list.iter().position(|(f, _, _)| *f == first)?;
        let (f, db, _) = self.list.remove(i)?;
        self.list.push_front((f, db.clone(), Instant::now()));
        Some(db)
    }
}

fn sweep_until_empty(inner: &Weak<Mutex<Kept>>, idle: Duration) {
    loop {
        std::thread::sleep(idle / 2);
        let Some(inner) = inner.upgrade() else { return };
        let mut kept = inner.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = kept
            .list
            .iter()
            .take_while(|k| k.2.elapsed() < idle)
            .count();
        let idle_ones = kept.list.split_off(fresh);
        let done = kept.list.is_empty();
        if done {
            kept.sweeping = false;
        }
        drop(kept);
        // Closed outside the lock: a read may open another meanwhile.
        drop(idle_ones);
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment left unread is closed (its lock is free again), and the
    /// thread that closed it starts again for the next one.
    #[test]
    fn an_unread_segment_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let path = dir.path().join(name);
            move || Ok(sled::Config::new().path(path).open()?)
        };
        let kept = KeptOpen::new(Duration::from_millis(100));
        for round in 0..2 {
            kept.get_or_open(1, open("a")).unwrap();
            kept.get_or_open(2, open("b")).unwrap();
            kept.get_or_open(3, open("c")).unwrap();
            assert!(kept.len() <= KEPT, "round {round}: at most {KEPT} kept");
            crate::wait::wait_until_blocking(
                "the unread segments to close",
                Duration::from_secs(10),
                || kept.len() == 0,
            );
            crate::wait::wait_until_blocking(
                "the thread that closed them to stop",
                Duration::from_secs(10),
                || !kept.lock().sweeping,
            );
            // Nothing holds a closed segment: each opens again (once sled,
            // which lets go of its file lock a moment after the last handle
            // is dropped, has let go).
            for name in ["a", "b", "c"] {
                crate::wait::wait_until_blocking(
                    "a closed segment to open again",
                    Duration::from_secs(10),
                    || open(name)().is_ok(),
                );
            }
        }
    }
}
