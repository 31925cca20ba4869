//! The files of an archive: segment names, the fingerprint files, opening
//! a segment's database.

use std::io::Write;
use std::path::Path;

use super::SEGMENT_CACHE;
use crate::storage::StoreError;

/// A 64-bit hash of an index key (FNV-1a; fixed, since the files keep it
/// across versions). 64 bits, not 32: a lookup opens every closed segment
/// whose fingerprints hold the key's, and with 32 bits a log of N keys
/// matches a new key by chance once in 2^32 / N lookups — at 400,000
/// orders and 10,000 trades/s about once a second; a heap profile of the
/// leader found two segments held open that way (docs/PERFORMANCE.md).
pub fn fingerprint(key: &[u8]) -> Fingerprint {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What [`fingerprint`] gives.
pub type Fingerprint = u64;

/// One entry of a segment's index: a key's fingerprint and the number of
/// the record the key names.
pub type Entry = (Fingerprint, u64);

/// Entries per block of a fingerprint file (4 KiB): a lookup reads one
/// block, named by the fences kept in memory (`filter::Closed`).
pub(super) const BLOCK: usize = 256;
/// Bytes per entry: the fingerprint and the number, 8 little-endian bytes
/// each.
const ENTRY: usize = 16;

/// The name of a segment's fingerprint file. Files of earlier versions end
/// in one of [`OLD_KEYS`] (64-bit fingerprints without numbers, and 32-bit
/// ones before them); they are never read, and are removed once their
/// segment's file is written anew.
const KEYS: &str = "fpn";
pub(super) const OLD_KEYS: [&str; 2] = ["fp64", "keys"];

pub(super) fn keys_file(dir: &Path, first: u64, end: u64) -> std::path::PathBuf {
    dir.join(format!("{}.{KEYS}", name(first, end)))
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
        } else if !path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == KEYS || OLD_KEYS.contains(&e))
        {
            closed.push(parse_name(&name).ok_or_else(|| not_a_segment(&path))?);
        }
    }
    Ok(Some((closed, tails)))
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (first, end) = name.split_once('-')?;
    Some((first.parse().ok()?, end.parse().ok()?))
}

/// The file: every entry (sorted), its fingerprint and its number as 8
/// little-endian bytes each, then the CRC-32 of them. An earlier version's
/// file of the same segment is removed.
pub(super) fn write_fingerprints(
    dir: &Path,
    first: u64,
    end: u64,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let mut bytes: Vec<u8> = Vec::with_capacity(entries.len() * ENTRY + 4);
    for (fp, number) in entries {
        bytes.extend_from_slice(&fp.to_le_bytes());
        bytes.extend_from_slice(&number.to_le_bytes());
    }
    let sum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let file = keys_file(dir, first, end);
    let tmp = dir.join(format!("{}.{KEYS}.new", name(first, end)));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(io)?;
    for ext in OLD_KEYS {
        match std::fs::remove_file(dir.join(format!("{}.{ext}", name(first, end)))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn parse_fingerprints(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if body.len() % ENTRY != 0 || crc32fast::hash(body).to_le_bytes() != sum {
        return None;
    }
    let entries = decode(body);
    entries.is_sorted().then_some(entries)
}

/// Entries as the file stores them.
fn decode(bytes: &[u8]) -> Vec<Entry> {
    let word = |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    bytes
        .chunks_exact(ENTRY)
        .map(|c| (word(&c[..8]), word(&c[8..])))
        .collect()
}

/// The entries of a segment's file, checked against its CRC; `None` when
/// it is missing, damaged or not sorted.
pub(super) fn read_fingerprints(dir: &Path, first: u64, end: u64) -> Option<Vec<Entry>> {
    std::fs::read(keys_file(dir, first, end))
        .ok()
        .and_then(|b| parse_fingerprints(&b))
}

/// Block `block` of a segment's fingerprint file, which holds `keys`
/// entries: read on its own, so it is checked against what is known of it
/// — its first fingerprint is `fence` and it is sorted — instead of the
/// file's CRC. `None` when it cannot be read or fails that check.
pub(super) fn read_block(
    dir: &Path,
    first: u64,
    end: u64,
    block: usize,
    keys: usize,
    fence: Fingerprint,
) -> Option<Vec<Entry>> {
    use std::os::unix::fs::FileExt;
    let start = block.checked_mul(BLOCK)?;
    let len = keys.checked_sub(start)?.min(BLOCK);
    let offset = u64::try_from(start.checked_mul(ENTRY)?).ok()?;
    let mut bytes = vec![0u8; len.checked_mul(ENTRY)?];
    std::fs::File::open(keys_file(dir, first, end))
        .and_then(|f| f.read_exact_at(&mut bytes, offset))
        .ok()?;
    let entries = decode(&bytes);
    (entries.first().map(|e| e.0) == Some(fence) && entries.is_sorted()).then_some(entries)
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
