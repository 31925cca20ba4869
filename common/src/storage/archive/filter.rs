//! One bit array in front of every closed segment's fingerprints, so that
//! a lookup by a key no segment holds — every new trade's key on the
//! leader — costs one memory read instead of a binary search in each
//! segment (a cost that grew with the log).
//!
//! A fingerprint sets one bit, chosen by a multiplicative hash; a clear
//! bit means no closed segment holds the key, a set one that some may
//! (then the segments' own fingerprints are searched as before). The array
//! keeps [`BITS_PER_KEY`] bits per fingerprint — 2 bytes per order, about
//! one lookup in sixteen passes — and is rebuilt twice as large when it
//! fills. The order log keeps the same kind of filter ([`KeyFilter`]) for
//! the keys of its open databases.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Segment;
use super::files::Fingerprint;

/// Bits per fingerprint the array is sized for.
const BITS_PER_KEY: usize = 16;
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

impl Closed {
    pub(super) fn new(list: Vec<Segment>) -> Closed {
        Closed {
            filter: KeyFilter::of(&list),
            list,
        }
    }

    /// Adds the newest segment; its keys pass the filter from now on.
    pub(super) fn push(&mut self, segment: Segment) {
        self.list.push(segment);
        self.filter.add_last(&self.list);
    }

    /// The first numbers of the segments whose fingerprints hold `fp`,
    /// newest first; none searched when the filter rules every one out.
    pub(super) fn holding(&self, fp: Fingerprint) -> Vec<u64> {
        if !self.filter.may_hold(fp) {
            return Vec::new();
        }
        self.list
            .iter()
            .rev()
            .filter(|s| s.fingerprints.binary_search(&fp).is_ok())
            .map(|s| s.first)
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
        let (word, bit) = self.slot(fp);
        self.bits[word].fetch_or(bit, Ordering::Relaxed);
    }

    /// Whether a key of fingerprint `fp` may have been added: when not, it
    /// was not.
    pub fn may_hold(&self, fp: Fingerprint) -> bool {
        let (word, bit) = self.slot(fp);
        self.bits[word].load(Ordering::Relaxed) & bit != 0
    }

    /// A filter of every fingerprint of `segments`.
    fn of(segments: &[Segment]) -> KeyFilter {
        let filter = KeyFilter::new(segments.iter().map(|s| s.fingerprints.len()).sum());
        for s in segments {
            s.fingerprints.iter().for_each(|&fp| filter.insert(fp));
        }
        filter
    }

    /// Adds the fingerprints of `segments`' newest one, rebuilding the
    /// array larger when it would hold more than it is sized for.
    fn add_last(&mut self, segments: &[Segment]) {
        let Some(last) = segments.last() else { return };
        let room = (1usize << self.log2) / BITS_PER_KEY;
        let keys: usize = segments.iter().map(|s| s.fingerprints.len()).sum();
        if keys > room && self.log2 < MAX_BITS_LOG2 {
            *self = KeyFilter::of(segments);
        } else {
            last.fingerprints.iter().for_each(|&fp| self.insert(fp));
        }
    }

    fn slot(&self, fp: Fingerprint) -> (usize, u64) {
        let mixed = fp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.log2);
        let index = usize::try_from(mixed).unwrap_or(0);
        (index / 64, 1 << (index % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: u64, fps: Vec<Fingerprint>) -> Segment {
        Segment {
            first,
            end: first + 1,
            fingerprints: fps,
        }
    }

    #[test]
    fn every_added_fingerprint_passes_and_most_others_do_not() {
        let mut segments = vec![segment(0, (0..1000u64).map(|i| i * 7919).collect())];
        let mut filter = KeyFilter::of(&segments);
        // Enough segments that the array is rebuilt larger several times.
        for s in 1..200u32 {
            segments.push(segment(
                u64::from(s),
                (0..1000u64)
                    .map(|i| (u64::from(s) * 1000 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    .collect(),
            ));
            filter.add_last(&segments);
        }
        assert!(filter.log2 > MIN_BITS_LOG2, "the array grew");
        for s in &segments {
            for &fp in &s.fingerprints {
                assert!(filter.may_hold(fp), "fingerprint {fp} was added");
            }
        }
        let passed = (0..100_000u64)
            .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).wrapping_add(1))
            .filter(|&fp| filter.may_hold(fp))
            .count();
        assert!(
            passed < 20_000,
            "{passed} of 100,000 unknown fingerprints passed"
        );
    }

    #[test]
    fn an_empty_filter_passes_nothing() {
        let filter = KeyFilter::of(&[]);
        assert!(!filter.may_hold(0));
        assert!(!filter.may_hold(u64::MAX));
    }
}
