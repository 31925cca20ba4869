//! One bit array in front of every closed segment's fingerprints, so that
//! a lookup by a key no segment holds — every new trade's key on the
//! leader — costs one memory read instead of a search in each segment (a
//! cost that grew with the log).
//!
//! A fingerprint sets [`BITS_SET`] bits of one 64-bit word, the word and
//! the bits chosen by two multiplicative hashes (a blocked Bloom filter);
//! a lookup whose bits are not all set is held by no closed segment, one
//! whose bits are may be (then the segments' fingerprint files are
//! searched). The array keeps [`BITS_PER_KEY`] bits per fingerprint — 2
//! bytes per order, about one lookup in 240 passes in a simulation (one in
//! 16 with one bit per key, before) — and is rebuilt twice as large, from the segments'
//! files, when it fills. The order log keeps the same kind of filter
//! ([`KeyFilter`]) for the key index trees of its open databases (written
//! before batch records).
//!
//! What stays in memory per segment is its fences: the fingerprint of
//! every 256th of its sorted index entries (8 bytes per 256 orders), which
//! name the one block of its file (4 KiB) a lookup reads.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Segment;
use super::files::{Entry, Fingerprint};

/// Bits per fingerprint the array is sized for.
const BITS_PER_KEY: usize = 16;
/// Bits a fingerprint sets in its word: at 16 bits per key the fewest
/// passes for one word (0.42% in a simulation; 6 and 8 the same, 4 0.52%).
const BITS_SET: u32 = 5;
/// The smallest array: 64 Ki bits (8 KiB).
const MIN_BITS_LOG2: u32 = 16;
/// The largest array: 2^32 bits (512 MiB, beyond 250 million orders);
/// past it the array stops growing and passes more lookups on.
const MAX_BITS_LOG2: u32 = 32;

/// The closed segments, oldest first, and the filter over their keys.
pub(super) struct Closed {
    list: Vec<Segment>,
    filter: KeyFilter,
}

/// A closed segment that may hold a key: the block of its fingerprint file
/// to search, and the fingerprint that block starts with.
pub(super) struct Candidate {
    pub first: u64,
    pub end: u64,
    pub block: usize,
    pub fence: Fingerprint,
    pub keys: usize,
}

impl Closed {
    pub(super) fn new(list: Vec<Segment>, filter: KeyFilter) -> Closed {
        Closed { list, filter }
    }

    /// Every segment's keys.
    pub(super) fn keys(&self) -> usize {
        self.list.iter().map(|s| s.keys).sum()
    }

    /// When `more` keys would overfill the array, the keys a larger one
    /// must be sized for (it is then rebuilt, [`Closed::replace_filter`]).
    pub(super) fn must_grow(&self, more: usize) -> Option<usize> {
        let keys = self.keys().saturating_add(more);
        (keys > self.filter.room() && self.filter.log2 < MAX_BITS_LOG2).then_some(keys)
    }

    /// The array's size, log2 of its bits.
    #[cfg(test)]
    pub(super) fn filter_bits(&self) -> u32 {
        self.filter.log2
    }

    pub(super) fn replace_filter(&mut self, filter: KeyFilter) {
        self.filter = filter;
    }

    /// Adds the newest segment, whose sorted index entries are `entries`;
    /// its keys pass the filter from now on.
    pub(super) fn push(&mut self, first: u64, end: u64, entries: &[Entry]) {
        entries.iter().for_each(|e| self.filter.insert(e.0));
        self.list.push(Segment::new(first, end, entries));
    }

    /// The segments whose fingerprints may hold `fp`, newest first, with
    /// the block of each to search; none when the filter rules every one
    /// out.
    pub(super) fn candidates(&self, fp: Fingerprint) -> Vec<Candidate> {
        if !self.filter.may_hold(fp) {
            return Vec::new();
        }
        self.list
            .iter()
            .rev()
            .filter_map(|s| {
                let block = s.fences.partition_point(|&f| f <= fp).checked_sub(1)?;
                Some(Candidate {
                    first: s.first,
                    end: s.end,
                    block,
                    fence: s.fences[block],
                    keys: s.keys,
                })
            })
            .collect()
    }
}

impl Deref for Closed {
    type Target = [Segment];
    fn deref(&self) -> &[Segment] {
        &self.list
    }
}

/// A set of fingerprints that can answer "certainly not held": one bit
/// per fingerprint in an array of [`BITS_PER_KEY`] bits per key it is
/// sized for. Safe to add to while others read; a key added before a store
/// makes its write visible (its `next`, with `Release`) passes for every
/// reader that saw that write.
pub struct KeyFilter {
    bits: Vec<AtomicU64>,
    log2: u32,
}

impl KeyFilter {
    /// An empty filter sized for `keys` fingerprints (more still work; past
    /// its size it passes more lookups on).
    pub fn new(keys: usize) -> KeyFilter {
        let log2 = keys
            .saturating_mul(BITS_PER_KEY)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(MIN_BITS_LOG2, MAX_BITS_LOG2);
        KeyFilter {
            bits: (0..1usize << (log2 - 6))
                .map(|_| AtomicU64::new(0))
                .collect(),
            log2,
        }
    }

    /// Adds a fingerprint ([`super::fingerprint`] of the key).
    pub fn insert(&self, fp: Fingerprint) {
        let (word, mask) = self.slot(fp);
        self.bits[word].fetch_or(mask, Ordering::Relaxed);
    }

    /// Whether a key of fingerprint `fp` may have been added: when not, it
    /// was not.
    pub fn may_hold(&self, fp: Fingerprint) -> bool {
        let (word, mask) = self.slot(fp);
        self.bits[word].load(Ordering::Relaxed) & mask == mask
    }

    /// The fingerprints it is sized for.
    fn room(&self) -> usize {
        (1usize << self.log2) / BITS_PER_KEY
    }

    /// The word of `fp` and the [`BITS_SET`] bits it sets there.
    fn slot(&self, fp: Fingerprint) -> (usize, u64) {
        let word = fp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - (self.log2 - 6));
        let bits = fp.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        let mask = (0..BITS_SET).fold(0u64, |m, i| m | 1 << ((bits >> (58 - 6 * i)) & 63));
        (usize::try_from(word).unwrap_or(0), mask)
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::BLOCK;
    use super::*;

    fn spread(i: u64) -> Fingerprint {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ i
    }

    #[test]
    fn every_added_fingerprint_passes_and_few_others_do() {
        let keys: Vec<Fingerprint> = (0..200_000u64).map(spread).collect();
        let filter = KeyFilter::new(keys.len());
        keys.iter().for_each(|&fp| filter.insert(fp));
        assert!(keys.iter().all(|&fp| filter.may_hold(fp)));
        let passed = (0..100_000u64)
            .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).wrapping_add(1))
            .filter(|&fp| filter.may_hold(fp))
            .count();
        // 0.42% expected at 16 bits per key (one bit per key passed 6%).
        assert!(
            passed < 1_000,
            "{passed} of 100,000 unknown fingerprints passed"
        );
    }

    #[test]
    fn an_empty_filter_passes_nothing() {
        let filter = KeyFilter::new(0);
        assert!(!filter.may_hold(0));
        assert!(!filter.may_hold(u64::MAX));
    }

    /// A segment is a candidate only for fingerprints from its first one
    /// on, with the block that starts at or below it.
    #[test]
    fn the_fences_name_the_block() {
        let fps: Vec<Fingerprint> = (0..(2 * BLOCK as u64 + 5)).map(|i| 10 + 2 * i).collect();
        let mut closed = Closed::new(Vec::new(), KeyFilter::new(fps.len()));
        let entries: Vec<_> = fps.iter().map(|&fp| (fp, 0)).collect();
        closed.push(0, 3000, &entries);
        assert!(closed.candidates(4).is_empty(), "the filter rules it out");
        let at = |fp: Fingerprint| closed.candidates(fp).first().map(|c| (c.block, c.fence));
        assert_eq!(at(10), Some((0, 10)));
        let second = fps[BLOCK];
        assert_eq!(at(second), Some((1, second)));
        assert_eq!(at(fps[BLOCK - 1]), Some((0, 10)));
        assert_eq!(at(*fps.last().unwrap()), Some((2, fps[2 * BLOCK])));
        assert_eq!(closed.keys(), fps.len());
    }
}
