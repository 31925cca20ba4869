//! The files of an archive: segment names, the fingerprint files, opening
//! a segment's database.

use std::io::Write;
use std::path::Path;

use super::SEGMENT_CACHE;
use crate::storage::StoreError;

/// 32 bits of a hash of an index key (FNV-1a; fixed, since the files keep
/// it across versions).
pub fn fingerprint(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (h >> 32) ^ (h & 0xffff_ffff);
    u32::try_from(folded).unwrap_or(u32::MAX)
}

pub(super) fn name(first: u64, end: u64) -> String {
    format!("{first:020}-{end:020}")
}

pub(super) fn tail_name(first: u64) -> String {
    format!("{first:020}-tail")
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Closed segments (`first..end`) and tails (`first`).
pub(super) type Listing = (Vec<(u64, u64)>, Vec<u64>);

/// The segments and tails in `dir`, after removing unfinished copies
/// (`.new`); `None` when `dir` does not exist. A name that is none of these
/// is refused with `not_a_segment`.
pub(super) fn list(
    dir: &Path,
    not_a_segment: impl Fn(&Path) -> StoreError,
) -> Result<Option<Listing>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(io)?,
    };
    let (mut closed, mut tails) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".new") {
            remove(&path)?;
        } else if let Some(first) = name.strip_suffix("-tail") {
            tails.push(first.parse::<u64>().map_err(|_| not_a_segment(&path))?);
        } else if !name.ends_with(".keys") {
            closed.push(parse_name(&name).ok_or_else(|| not_a_segment(&path))?);
        }
    }
    Ok(Some((closed, tails)))
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (first, end) = name.split_once('-')?;
    Some((first.parse().ok()?, end.parse().ok()?))
}

/// The file: every fingerprint as 4 little-endian bytes, then the CRC-32
/// of them.
pub(super) fn write_fingerprints(
    dir: &Path,
    first: u64,
    end: u64,
    fps: &[u32],
) -> Result<(), StoreError> {
    let mut bytes: Vec<u8> = fps.iter().flat_map(|f| f.to_le_bytes()).collect();
    let sum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let file = dir.join(format!("{}.keys", name(first, end)));
    let tmp = dir.join(format!("{}.keys.new", name(first, end)));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(io)
}

pub(super) fn parse_fingerprints(bytes: &[u8]) -> Option<Vec<u32>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if body.len() % 4 != 0 || crc32fast::hash(body).to_le_bytes() != sum {
        return None;
    }
    let fps: Vec<u32> = body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    fps.is_sorted().then_some(fps)
}

/// Opens a tail segment as the store's own database is opened.
pub(super) fn open_service(path: &Path) -> Result<sled::Db, StoreError> {
    crate::storage::open_when_unlocked(|| Ok(crate::storage::open_db(path, "this service")?))
}

/// Opens a segment's directory (no background flusher: a closed segment is
/// written once, and flushed by its writer).
pub(super) fn open_segment(path: &Path) -> Result<sled::Db, StoreError> {
    crate::storage::open_when_unlocked(|| {
        Ok(crate::storage::open_db_with(
            path,
            "this service",
            SEGMENT_CACHE,
            None,
        )?)
    })
}

pub(super) fn remove(path: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(path)
        .or_else(|_| std::fs::remove_file(path))
        .map_err(io)
}

pub(super) fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("I/O error: {e}"))
}
