//! Small disks for `bazaar chaos`: the catalog's and every replica's
//! database each on its own tmpfs, so a fault can fill one service's disk
//! (a filler file written until `ENOSPC`) and heal it (the filler removed).
//! Each is a [`Tmpfs`]: mounting needs root; [`Disks::mount`] says why it
//! cannot otherwise, and the run skips the disk faults. Every tmpfs is
//! unmounted when [`Disks`] is dropped, also when the run fails half-way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

use super::faults::Fault;
use crate::cluster::Service;
use crate::tmpfs::Tmpfs;

/// Size of each small disk at the start of a run of `duration`. Measured on
/// tmpfs: a replica's sled database takes some 170 bytes per order in a
/// release build (11.7 MB after a 120 s run of 70,774 orders, about 600 a
/// second) and some 650 in a debug build (2.6 MB after 4,000 orders); the
/// catalog's less. 512 KiB per second of run is five times the release
/// figure. A machine that trades faster gets its disks grown while the run
/// goes ([`Disks::keep_headroom`]), so the run never fills a disk by itself;
/// only the filler does.
pub fn disk_bytes(duration: Duration) -> u64 {
    const BASE: u64 = 16 * 1024 * 1024;
    const PER_SECOND: u64 = 512 * 1024;
    BASE + PER_SECOND * duration.as_secs().max(1)
}

/// Where the disk faults could not be had, once per run.
pub(super) fn skip_note(why: &str) -> String {
    format!(
        "bazaar chaos: skipping the disk faults ({}): {why}",
        Fault::DISKS.map(Fault::name).join(", ")
    )
}

/// One service's small disk.
struct SmallDisk {
    service: Service,
    disk: Tmpfs,
}

/// The small disks of one run.
pub struct Disks {
    disks: Vec<SmallDisk>,
    /// Size of each disk; grows (see [`Disks::keep_headroom`]).
    bytes: std::sync::atomic::AtomicU64,
}

/// Bytes in files under `dir` (allocated blocks, as tmpfs counts them).
fn used_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => used_under(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

impl Disks {
    /// Mounts a tmpfs of `bytes` for each of `services`, or says why it
    /// cannot (not root, `mount` missing or refused). Whatever was mounted
    /// before a failure is unmounted again.
    pub fn mount(services: &[Service], bytes: u64) -> Result<Disks, String> {
        let mut disks = Disks {
            disks: Vec::new(),
            bytes: bytes.into(),
        };
        for &service in services {
            let disk = Tmpfs::mount(&format!("bazaar-chaos-disk-{service}-"), bytes)?;
            disks.disks.push(SmallDisk { service, disk });
        }
        Ok(disks)
    }

    /// Size of each disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Doubles the size of every disk (a live `mount -o remount`) while a
    /// database takes more than half of it, so the run never fills a disk
    /// by itself whatever its trade rate; only the filler does. Call it
    /// while no disk is being filled. Returns the size now.
    pub fn keep_headroom(&self) -> anyhow::Result<u64> {
        let used = self.used().into_iter().map(|(_, n)| n).max().unwrap_or(0);
        let mut bytes = self.bytes();
        if used <= bytes / 2 {
            return Ok(bytes);
        }
        while used > bytes / 2 {
            bytes *= 2;
        }
        for d in &self.disks {
            d.disk.resize(bytes).with_context(|| {
                format!(
                    "cannot grow the small disk of {} to {bytes} bytes",
                    d.service
                )
            })?;
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        tracing::info!(used, bytes, "small disks grown");
        Ok(bytes)
    }

    fn disk(&self, s: Service) -> anyhow::Result<&Tmpfs> {
        self.disks
            .iter()
            .find(|d| d.service == s)
            .map(|d| &d.disk)
            .with_context(|| format!("{s} has no small disk"))
    }

    /// Where the database of each service goes (a directory on its disk).
    pub fn db_paths(&self) -> Vec<(Service, PathBuf)> {
        self.disks
            .iter()
            .map(|d| (d.service, d.disk.path().join(d.service.to_string())))
            .collect()
    }

    /// Fills every free byte of `s`'s disk with a filler file; returns its
    /// size. Blocking: call it off the async threads.
    pub fn fill(&self, s: Service) -> anyhow::Result<u64> {
        self.disk(s)?
            .fill()
            .with_context(|| format!("filling the disk of {s}"))
    }

    /// Removes the filler of `s`'s disk: the space is back.
    pub fn free(&self, s: Service) -> anyhow::Result<()> {
        self.disk(s)?.free()
    }

    /// Bytes the databases take on each disk now (the filler not counted).
    pub fn used(&self) -> Vec<(Service, u64)> {
        self.disks
            .iter()
            .map(|d| {
                let db = d.disk.path().join(d.service.to_string());
                (d.service, used_under(&db))
            })
            .collect()
    }

    /// Copies every database (not the fillers) into `dir/<service>`, to
    /// keep them once the disks are unmounted.
    pub fn copy_into(&self, dir: &Path) -> std::io::Result<()> {
        for d in &self.disks {
            let name = d.service.to_string();
            copy_tree(&d.disk.path().join(&name), &dir.join(&name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_files_below_and_copies_keep_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("order-1");
        std::fs::create_dir_all(db.join("blobs")).unwrap();
        std::fs::write(db.join("db"), vec![1u8; 10_000]).unwrap();
        std::fs::write(db.join("blobs/a"), vec![2u8; 5_000]).unwrap();
        let used = used_under(&db);
        assert!(used >= 15_000, "{used}");
        assert_eq!(used_under(&dir.path().join("missing")), 0);
        let to = dir.path().join("kept");
        copy_tree(&db, &to).unwrap();
        assert_eq!(std::fs::read(to.join("blobs/a")).unwrap().len(), 5_000);
        assert_eq!(std::fs::read(to.join("db")).unwrap().len(), 10_000);
    }
}
