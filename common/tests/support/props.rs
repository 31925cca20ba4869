//! The property-test runner the crates' `*_props.rs` tests share: runs a
//! property on a bounded number of inputs and prints how many ran and how
//! long they took (the figures the fuzzing report quotes).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `test` on `cases` inputs drawn from `strategy` and prints the figures.
pub fn check<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let executions = AtomicU64::new(0);
    let start = Instant::now();
    let result = runner.run(&strategy, |v| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    println!(
        "property {name}: {} executions in {:.1?}",
        executions.load(Ordering::Relaxed),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("property {name} failed: {e}");
    }
}
