//! The catalog's record of applied orders. The newest are in trees of the
//! catalog's own database, written in the same flush as the stocks;
//! older ones in closed segments (`common::storage::archive`), so that the
//! catalog's memory does not grow with the log.
//!
//! Appends go to the last tree, one record per batch
//! (`applied-batches-<first>`; `common::storage::batches`). Trees written
//! before batch records hold one record per order (`applied`, in a
//! database written before segments, then `applied-<first>`); they are
//! read as they are and never written again: a database that ends in one
//! gets a tree of batch records after it at open. Once the last tree holds
//! `Sizes::segment` orders, a new tree follows it, and on a blocking thread
//! the full tree is copied into a closed segment and then dropped whole
//! (sled frees a dropped tree's pages at once; removing its records one by
//! one would cost as much as writing them). A tree found at open whose
//! orders a closed segment already holds (a stop between the copy and the
//! drop) is dropped then.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use common::storage::archive::{Archive, Closing, Sizes};
use common::storage::{self, Database, Format, MAX_RANGE, StoreError, batches, encode_key};
use common::types::OrderRecord;

mod trees;

pub(super) use trees::Kind;

/// The tree of a database written before segments.
const LEGACY: &str = "applied";
/// The prefix of the trees of one record per order, after `LEGACY`.
const PER_ORDER: &str = "applied-";
/// The prefix of the trees of batch records.
const BATCHED: &str = "applied-batches-";
/// The tree of a closed segment: of one record per order (the archive's
/// numbered tree), or of batch records.
const SEGMENT_ORDERS: &str = "applied";
const SEGMENT_BATCHES: &str = "batches";

/// One tree of applied orders in the catalog's database.
#[derive(Clone)]
struct Part {
    first: u64,
    name: String,
    kind: Kind,
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
            let (first, batched) = if let Some(n) = name.strip_prefix(BATCHED) {
                (Some(n), true)
            } else if let Some(n) = name.strip_prefix(PER_ORDER) {
                (Some(n), false)
            } else if name == LEGACY {
                (None, false)
            } else {
                continue;
            };
            let first = first
                .map(|n| {
                    n.parse::<u64>()
                        .map_err(|_| corrupt(format!("a tree is named {name:?}")))
                })
                .transpose()?;
            let tree = db.tree(&name)?;
            let first = match first {
                Some(first) => first,
                None => match tree.first()? {
                    Some((k, _)) => storage::decode_number("applied", &k)?,
                    None => continue,
                },
            };
            let kind = Kind { tree, batched };
            parts.push(Part { first, name, kind });
        }
        parts.sort_by_key(|p| p.first);
        let (archived, kept): (Vec<Part>, Vec<Part>) =
            parts.into_iter().partition(|p| p.first < end);
        for part in &archived {
            db.write(|| Ok(db.engine().drop_tree(&part.name).map(|_| ())?))?;
        }
        let mut parts = kept;
        for part in &parts {
            // A last number of u64::MAX leaves none to hand out.
            storage::next_number(&part.kind.tree, "applied")?;
        }
        // Appends write batch records: a record that ends in a tree of one
        // record per order (or in none) gets a tree of them after it.
        let last = match parts.last() {
            Some(last) if last.kind.batched => None,
            Some(last) => Some((
                last.first,
                storage::next_number(&last.kind.tree, "applied")?,
            )),
            None => Some((end, end)),
        };
        match last {
            None => {}
            Some((first, next)) if next > first => parts.push(Part::batched(db, next)?),
            Some((first, _)) => {
                // A tree of one record per order that holds none yet (or
                // none at all): the batch records start where it would.
                if let Some(empty) = parts.pop() {
                    db.write(|| Ok(db.engine().drop_tree(&empty.name).map(|_| ())?))?;
                }
                parts.push(Part::batched(db, first)?);
            }
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

    /// The tree appends go to (of batch records, from open on).
    pub fn current(&self) -> Kind {
        let parts = self.parts.read().unwrap_or_else(|e| e.into_inner());
        parts
            .last()
            .map(|p| p.kind.clone())
            .expect("one tree at least")
    }

    /// One more than the highest applied order (0 when none): a tree's
    /// last key is its highest order in either kind.
    pub fn next(&self) -> Result<u64, StoreError> {
        let parts = self.parts();
        let last = parts.last().expect("one tree at least");
        Ok(storage::next_number(&last.kind.tree, "applied")?.max(last.first))
    }

    /// The last record of the trees, where it is a batch record (the newest
    /// batch's last; see `batch::redo_last`).
    pub fn last_record(&self) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        for part in self.parts().iter().rev() {
            if let Some(kv) = part.kind.tree.last()? {
                return Ok(part.kind.batched.then_some(kv));
            }
        }
        Ok(None)
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
            for (first, end) in self.archive.segments() {
                let (start, stop) = (from.max(first), end.min(root).min(below));
                if start < stop && left(&out) > 0 {
                    let cap = left(&out) as usize;
                    self.archive.with_segment(first, |db| {
                        segment_tree(db)?.read(format, start, stop, cap, &mut out)
                    })?;
                }
            }
            for (i, part) in parts.iter().enumerate() {
                let end = parts.get(i + 1).map_or(below, |p| p.first.min(below));
                let start = from.max(part.first);
                let cap = left(&out) as usize;
                part.kind.read(format, start, end, cap, &mut out)?;
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
        let part = Part::batched(&self.db, next)?;
        self.parts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(part);
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
            // Read as the copy goes; the archive refuses a segment of one
            // record per order whose orders are not all there, and batch
            // records are checked here first (a decode per batch).
            let tree = if part.kind.batched {
                self.db
                    .read(part.kind.verify(self.db.format(), (lo, lo), hi))?;
                SEGMENT_BATCHES
            } else {
                SEGMENT_ORDERS
            };
            let records = part
                .kind
                .tree
                .range(encode_key(lo)..encode_key(hi))
                .map(|kv| kv.map_err(StoreError::from));
            self.db.write(|| {
                self.archive.close(Closing {
                    first: lo,
                    end: hi,
                    trees: vec![(tree, Box::new(records))],
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
                    segment_tree(db)?.verify(format, (first, first.max(from)), end)
                })?;
            }
        }
        let parts = self.parts();
        for (i, part) in parts.iter().enumerate() {
            let end = parts.get(i + 1).map_or(below, |p| p.first);
            if end > from {
                part.kind
                    .verify(format, (part.first, from.max(part.first)), end)?;
            }
        }
        Ok(())
    }
}

impl Part {
    /// A new tree of batch records whose first order is `first`.
    fn batched(db: &Database, first: u64) -> Result<Part, StoreError> {
        let name = format!("{BATCHED}{first:020}");
        let tree = db.write(|| db.tree(&name))?;
        Ok(Part {
            first,
            name,
            kind: Kind {
                tree,
                batched: true,
            },
        })
    }
}

/// The tree of applied orders of a closed segment: its batch records if it
/// has them (a segment is never written, so a tree it lacks is not opened,
/// which would make it).
fn segment_tree(db: &sled::Db) -> Result<Kind, StoreError> {
    Ok(match batches::existing(db, SEGMENT_BATCHES)? {
        Some(tree) => Kind {
            tree,
            batched: true,
        },
        None => Kind {
            tree: db.open_tree(SEGMENT_ORDERS)?,
            batched: false,
        },
    })
}

#[cfg(test)]
mod tests;
