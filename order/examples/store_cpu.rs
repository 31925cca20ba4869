//! What a replica's store costs in CPU per order, alone in a process:
//! batches of `--depth` orders appended to a fresh log in `--dir` (its
//! batch records, then a flush, as a replica does for each batch), or with
//! `--raw` records inserted into plain sled trees and flushed (the engine
//! alone, without our encoding and checksums): one record per order in an
//! order tree and one in a key tree (the log's format before batch
//! records), or with `--tree` only one of them. `--record-per-batch` writes
//! the order tree as one record per batch (bare: what the log writes now,
//! without its encoding).
//! `--ordered-keys` makes the keys rise with the order number instead of
//! falling anywhere, as keys that start with a clock would.
//!
//! CPU is the process's user and system time from `/proc/self/stat`, so it
//! includes sled's I/O threads. docs/PERFORMANCE.md uses it to split a
//! trade's storage CPU into a part per batch and a part per order.
//!
//! ```sh
//! cargo run --release -p order --example store_cpu -- --dir /tmp/probe --depth 22
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use common::proc_stat;
use common::types::{OrderRecord, TradeKind};
use order::store::OrderLog;

#[derive(Parser)]
struct Args {
    /// A directory on the disk to measure: the probe's database is made
    /// in a new directory inside it and removed at the end.
    #[arg(long)]
    dir: PathBuf,
    /// Orders per batch (per flush).
    #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(u64).range(1..))]
    depth: u64,
    /// Orders in all (rounded up to whole batches).
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u64).range(1..))]
    orders: u64,
    /// Plain sled trees instead of the replica's log.
    #[arg(long)]
    raw: bool,
    /// With `--raw`: write only this tree.
    #[arg(long, value_enum, requires = "raw")]
    tree: Option<Tree>,
    /// Keys that rise with the order number (the first 12 hex digits are
    /// the number) instead of 32 hex digits spread at random.
    #[arg(long)]
    ordered_keys: bool,
    /// With `--raw`: the order tree holds one record per batch (all its
    /// orders, under the first one's number) instead of one per order.
    #[arg(long, requires = "raw")]
    record_per_batch: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Tree {
    Orders,
    Keys,
}

/// User + system ticks of this process so far (all threads).
fn cpu_ticks() -> anyhow::Result<u64> {
    proc_stat::read(None)
        .map(|s| s.cpu_ticks)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/stat does not read"))
}

/// Orders `first..first + depth`, each with a key of 32 hex digits, the
/// size of a front-end's generated key.
fn batch(first: u64, depth: u64, ordered_keys: bool) -> Vec<OrderRecord> {
    (first..first + depth)
        .map(|n| {
            let spread = u128::from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let key = if ordered_keys {
                format!("{n:012x}{:020x}", spread & ((1 << 80) - 1))
            } else {
                format!("{spread:032x}")
            };
            OrderRecord {
                number: n,
                name: "AAPL".into(),
                kind: TradeKind::Buy,
                quantity: 1,
                key,
            }
        })
        .collect()
}

async fn append_all(dir: &Path, args: &Args) -> anyhow::Result<u64> {
    let mut written = 0;
    if args.raw {
        let db = common::storage::open_db(dir, "store_cpu")?;
        let (orders, keys) = (db.open_tree("orders")?, db.open_tree("keys")?);
        while written < args.orders {
            let records = batch(written, args.depth, args.ordered_keys);
            if args.record_per_batch && args.tree != Some(Tree::Keys) {
                orders.insert(written.to_be_bytes(), postcard::to_allocvec(&records)?)?;
            }
            for r in records {
                if !args.record_per_batch && args.tree != Some(Tree::Keys) {
                    orders.insert(r.number.to_be_bytes(), postcard::to_allocvec(&r)?)?;
                }
                if args.tree != Some(Tree::Orders) {
                    keys.insert(r.key.as_bytes(), &r.number.to_be_bytes())?;
                }
            }
            db.flush_async().await?;
            written += args.depth;
        }
    } else {
        let log = OrderLog::open(dir)?;
        while written < args.orders {
            written = log
                .append(&batch(written, args.depth, args.ordered_keys))
                .await?;
        }
    }
    Ok(written)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let probe = tempfile::Builder::new()
        .prefix("store-cpu-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("making a directory in {}", args.dir.display()))?;
    let (ticks, started) = (cpu_ticks()?, Instant::now());
    let written = append_all(&probe.path().join("db"), &args).await?;
    let (cpu_ticks, wall) = (cpu_ticks()? - ticks, started.elapsed());
    #[allow(clippy::cast_precision_loss)]
    let (orders, batches) = (written as f64, written.div_ceil(args.depth) as f64);
    #[allow(clippy::cast_precision_loss)]
    let cpu_us = cpu_ticks as f64 * 1e6 / proc_stat::TICKS_PER_SECOND;
    println!(
        "{} depth {}: {written} orders in {batches} batches, CPU {:.1} µs per order, \
         {:.0} µs per batch; wall {:.0} µs per batch",
        match (args.raw, args.tree) {
            (false, _) => "order log",
            (true, None) if args.record_per_batch =>
                "raw sled, a record per batch and the key tree",
            (true, Some(Tree::Orders)) if args.record_per_batch => "raw sled, a record per batch",
            (true, None) => "raw sled, both trees",
            (true, Some(Tree::Orders)) => "raw sled, the order tree",
            (true, Some(Tree::Keys)) => "raw sled, the key tree",
        },
        args.depth,
        cpu_us / orders,
        cpu_us / batches,
        wall.as_secs_f64() * 1e6 / batches
    );
    Ok(())
}
