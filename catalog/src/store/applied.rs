//! The catalog's record of applied orders. The newest are in trees of the
//! catalog's own database, written in the same transaction as the stocks;
//! older ones in closed segments (`common::storage::archive`), so that the
//! catalog's memory does not grow with the log.
//!
//! Appends go to the last tree (`applied`, in a database written before
//! segments, then `applied-<first>`). Once it holds `Sizes::segment`
//! orders, a new tree follows it, and on a blocking thread the full tree is
//! copied into a closed segment and then dropped whole (sled frees a
//! dropped tree's pages at once; removing its orders one by one would cost
//! as much as writing them). A tree found at open whose orders a closed
//! segment already holds (a stop between the copy and the drop) is dropped
//! then.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use common::storage::archive::{Archive, Closing, Sizes};
use common::storage::{self, Database, Format, MAX_RANGE, StoreError, encode_key};
use common::types::OrderRecord;

/// The tree of a database written before segments.
const LEGACY: &str = "applied";

/// One tree of applied orders in the catalog's database.
#[derive(Clone)]
struct Part {
    first: u64,
    name: String,
    tree: sled::Tree,
}

pub(super) struct Applied {
    db: Arc<Database>,
    pub archive: Archive,
    /// Oldest first; appends go to the last.
    parts: RwLock<Vec<Part>>,
    /// Moves on whenever a tree leaves `parts` (a read across it retries).
    version: AtomicU64,
    /// Whether a tree is being copied into a segment (one job at a time).
    closing: Arc<AtomicBool>,
}

fn corrupt(message: String) -> StoreError {
    StoreError::Corrupt {
        tree: "applied",
        message,
    }
}

impl Applied {
    /// Opens the record in `db` (at `path`), dropping the trees a closed
    /// segment already holds.
    pub fn open(db: &Arc<Database>, path: &std::path::Path) -> Result<Applied, StoreError> {
        let archive = Archive::open(path, "applied", None)?;
        if archive.start().is_some_and(|s| s != 0) || archive.tail().is_some() {
            return Err(corrupt(format!(
                "the segments of applied orders start at {:?}, not 0 (or hold a tail)",
                archive.start()
            )));
        }
        let end = archive.end();
        let mut parts = Vec::new();
        for name in db.engine().tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            let first = match name.strip_prefix("applied-") {
                Some(n) => Some(
                    n.parse::<u64>()
                        .map_err(|_| corrupt(format!("a tree is named {name:?}")))?,
                ),
                None if name == LEGACY => None,
                None => continue,
            };
            let tree = db.tree(&name)?;
            let first = match first {
                Some(first) => first,
                None => match tree.first()? {
                    Some((k, _)) => storage::decode_number("applied", &k)?,
                    None => continue,
                },
            };
            parts.push(Part { first, name, tree });
        }
        parts.sort_by_key(|p| p.first);
        let (archived, kept): (Vec<Part>, Vec<Part>) =
            parts.into_iter().partition(|p| p.first < end);
        for part in &archived {
            db.write(|| Ok(db.engine().drop_tree(&part.name).map(|_| ())?))?;
        }
        let mut parts = kept;
        if parts.is_empty() {
            let name = if end == 0 {
                LEGACY.to_string()
            } else {
                tree_name(end)
            };
            parts.push(Part {
                first: end,
                tree: db.tree(&name)?,
                name,
            });
        }
        for part in &parts {
            // A last number of u64::MAX leaves none to hand out.
            storage::next_number(&part.tree, "applied")?;
        }
        if parts[0].first != end {
            return Err(corrupt(format!(
                "order {end} is missing (the first one held is {})",
                parts[0].first
            )));
        }
        if !archived.is_empty() {
            db.flush_blocking()?;
        }
        Ok(Applied {
            db: Arc::clone(db),
            archive,
            parts: RwLock::new(parts),
            version: AtomicU64::new(0),
            closing: Arc::new(AtomicBool::new(false)),
        })
    }

    fn parts(&self) -> Vec<Part> {
        self.parts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The tree appends go to.
    pub fn current(&self) -> sled::Tree {
        let parts = self.parts.read().unwrap_or_else(|e| e.into_inner());
        parts
            .last()
            .map(|p| p.tree.clone())
            .expect("one tree at least")
    }

    /// One more than the highest applied order (0 when none).
    pub fn next(&self) -> Result<u64, StoreError> {
        let parts = self.parts();
        let last = parts.last().expect("one tree at least");
        Ok(storage::next_number(&last.tree, "applied")?.max(last.first))
    }

    /// Applied orders `from..below`, at most `limit` (capped at
    /// [`MAX_RANGE`]), from the closed segments and then the trees.
    pub fn range(
        &self,
        format: Format,
        from: u64,
        below: u64,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let limit = limit.min(MAX_RANGE);
        loop {
            let version = self.version.load(Ordering::Acquire);
            let parts = self.parts();
            let mut out = Vec::new();
            let left = |out: &Vec<OrderRecord>| {
                limit.saturating_sub(u32::try_from(out.len()).unwrap_or(u32::MAX))
            };
            let root = parts.first().map_or(below, |p| p.first);
            if from < root {
                let cap = usize::try_from(limit).unwrap_or(usize::MAX);
                for (k, v) in self.archive.range(from, root.min(below), cap)? {
                    let number = storage::decode_number("applied", &k)?;
                    out.push(format.decode_numbered("applied", number, &v)?);
                }
            }
            for (i, part) in parts.iter().enumerate() {
                let end = parts.get(i + 1).map_or(below, |p| p.first.min(below));
                let start = from.max(part.first);
                if start < end && left(&out) > 0 {
                    let page = format.range(&part.tree, "applied", start, end, left(&out))?;
                    out.extend(page);
                }
            }
            if self.version.load(Ordering::Acquire) == version {
                return Ok(out);
            }
        }
    }

    /// Once the last tree holds `sizes.segment` orders (below `next`),
    /// starts a new one at `next` and copies the full ones into closed
    /// segments on a blocking thread. Runs under the catalog's sequencer,
    /// between batches.
    pub fn rotate_if_due(self: &Arc<Self>, next: u64, sizes: Sizes) -> Result<(), StoreError> {
        let first = self.parts().last().map_or(0, |p| p.first);
        if next.saturating_sub(first) < sizes.segment {
            return Ok(());
        }
        let name = tree_name(next);
        let tree = self.db.write(|| self.db.tree(&name))?;
        self.parts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Part {
                first: next,
                name,
                tree,
            });
        if !self.closing.swap(true, Ordering::AcqRel) {
            let (applied, closing) = (Arc::clone(self), Arc::clone(&self.closing));
            tokio::task::spawn_blocking(move || {
                let closed = applied.close_full_trees();
                drop(applied);
                if let Err(e) = closed {
                    tracing::error!(error = %e, "moving applied orders to a segment failed");
                }
                closing.store(false, Ordering::Release);
            });
        }
        Ok(())
    }

    /// Whether a tree is being copied into a segment.
    pub fn closing_flag(&self) -> &AtomicBool {
        &self.closing
    }

    /// Copies every tree but the last into a closed segment, then drops it
    /// (not flushed here: the next batch's flush makes the drop durable,
    /// and the next open drops it again if it was lost).
    fn close_full_trees(&self) -> Result<(), StoreError> {
        loop {
            let parts = self.parts();
            let [part, following, ..] = &parts[..] else {
                return Ok(());
            };
            let (lo, hi) = (part.first, following.first);
            // Read as the copy goes; the archive refuses a segment whose
            // orders are not all there.
            let records = part
                .tree
                .range(encode_key(lo)..encode_key(hi))
                .map(|kv| kv.map_err(StoreError::from));
            self.db.write(|| {
                self.archive.close(Closing {
                    first: lo,
                    end: hi,
                    trees: vec![("applied", Box::new(records))],
                })
            })?;
            self.parts
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(0);
            self.version.fetch_add(1, Ordering::AcqRel);
            self.db
                .write(|| Ok(self.db.engine().drop_tree(&part.name).map(|_| ())?))?;
            tracing::debug!(from = lo, to = hi - 1, "applied orders moved to a segment");
        }
    }

    /// Checks the applied orders `from..below` (see [`verify`]): the closed
    /// segments' (whole) and the trees'.
    pub fn verify(&self, format: Format, from: u64, below: u64) -> Result<(), StoreError> {
        for (first, end) in self.archive.segments() {
            if end > from {
                self.archive.with_segment(first, |db| {
                    verify(
                        format,
                        &db.open_tree("applied")?,
                        (first, first.max(from)),
                        end,
                    )
                })?;
            }
        }
        let parts = self.parts();
        for (i, part) in parts.iter().enumerate() {
            let end = parts.get(i + 1).map_or(below, |p| p.first);
            if end > from {
                verify(format, &part.tree, (part.first, from.max(part.first)), end)?;
            }
        }
        Ok(())
    }
}

fn tree_name(first: u64) -> String {
    format!("applied-{first:020}")
}

/// Checks the applied orders `from..below` of one tree whose first order
/// is `first`: each decodes (and passes its checksum), and the numbers run
/// without a gap. Orders applied since (from `below` on) are left alone.
fn verify(
    format: Format,
    applied: &sled::Tree,
    (first, from): (u64, u64),
    below: u64,
) -> Result<(), StoreError> {
    if let Some((k, _)) = applied.first()? {
        let held = storage::decode_number("applied", &k)?;
        if held != first {
            return Err(corrupt(format!(
                "order {first} is missing (the first one held is {held})"
            )));
        }
    }
    let mut expected = from;
    for kv in applied.range(encode_key(from)..encode_key(below)) {
        let (k, v) = kv?;
        let number = storage::decode_number("applied", &k)?;
        if number != expected {
            return Err(corrupt(format!(
                "order {expected} is missing (the next one held is {number})"
            )));
        }
        format.decode_numbered::<OrderRecord>("applied", number, &v)?;
        expected = number.saturating_add(1);
    }
    if expected < below {
        return Err(corrupt(format!("order {expected} is missing")));
    }
    Ok(())
}
