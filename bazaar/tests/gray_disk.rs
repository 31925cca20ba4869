//! Full disks on the real binaries (issue 14, findings 2–4): one service's
//! database lives on a small tmpfs, the test fills it with a filler file
//! under a steady trickle of trades, then removes the filler. The cluster is
//! supervised (as `bazaar up` runs it), so a service that exits to be
//! restarted (`common::EXIT_RESTART`) comes back by itself.
//!
//! - Leader's disk full: trades succeed again within 5 s (the leadership
//!   moves), nothing acknowledged is lost, and once space is freed the old
//!   leader is restarted, catches up and is identical to the others.
//! - Catalog's disk full: no lookup ever shows a quantity that the final
//!   order log does not explain (no phantom state), and trades work again
//!   within 5 s of the space being freed, with no human action.
//! - Follower's disk full: the leader keeps acknowledging; after freeing
//!   space the follower is back and identical.
//!
//! Mounting needs root: as another user each test prints why it skips. The
//! tmpfs is unmounted when the test ends, also when it fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use common::types::{Health, Order, StorageState, TradeKind};
use common::wait::{poll, wait_until};
use support::*;

/// The bound: trades succeed again within this long of a fault.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// Size of the small disk. A service's sled database takes 16 KiB after
/// start-up and about 130 KiB after 400 trades (measured on tmpfs), so
/// this leaves room for the test's trades until the filler takes the rest.
const DISK_BYTES: u64 = 4 * 1024 * 1024;
/// How long the test watches that the leadership stays away from the
/// degraded replica: many health-check intervals (100 ms in a scratch cluster).
const STAY_AWAY_FOR: Duration = Duration::from_secs(2);

/// A tmpfs of a fixed size on a temporary mount point, unmounted on drop.
struct SmallDisk {
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`, or says why it cannot (not root, no
    /// permission to mount here) and returns `None`.
    fn mount(bytes: u64) -> Option<SmallDisk> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root; this test runs as another user");
            return None;
        }
        let mount_point = tempfile::Builder::new()
            .prefix("bazaar-small-disk-")
            .tempdir()
            .expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(mount_point.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { mount_point }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills every free byte with a filler file; returns its size.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.filler()).expect("filler file");
        let chunk = vec![0xA5u8; 64 * 1024];
        let mut written = 0u64;
        // Whole chunks, then smaller and smaller writes for the last pages.
        let mut size = chunk.len();
        while size > 0 {
            match f.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => size /= 2,
                Err(e) => panic!("filling the small disk: {e}"),
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Removes the filler: the space is back.
    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let path = self.mount_point.path().to_path_buf();
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            match cmd.arg(&path).output() {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        if let Err(e) = umount(false) {
            // A process that still holds a file there: detach it now, the
            // kernel frees it when the last file closes.
            eprintln!("umount {}: {e}; detaching it lazily", path.display());
            if let Err(e) = umount(true) {
                eprintln!("umount -l {}: {e}", path.display());
            }
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A supervised cluster whose `service` keeps its database on `disk`.
async fn cluster_with_db_on(disk: &SmallDisk, service: Service) -> TestCluster {
    let name = service.to_string();
    let mut t = TestCluster::prepare(ScratchOptions {
        db_paths: vec![(service, disk.path().join(name))],
        ..ScratchOptions::default()
    });
    t.cluster.supervise(true).expect("supervision");
    t.launch().await;
    wait_until(
        "the front-end to pick order-3 (highest id) as leader",
        Duration::from_secs(10),
        || async { t.frontend_leader().await == Some(3) },
    )
    .await;
    t
}

fn back_to_normal(h: &Health) -> bool {
    h.ready && h.storage == StorageState::Ok && h.role != common::types::Role::CatchingUp
}

/// The supervisor restarted `s` after it exited with `EXIT_RESTART`.
fn assert_supervised_restart(t: &TestCluster, s: Service) {
    let sup = t.cluster.supervised(s);
    eprintln!("{s} under supervision: {sup:?}");
    assert!(sup.restarts >= 1, "{s} was not restarted: {sup:?}");
    let exit = sup.last_exit.as_ref().expect("an exit was recorded");
    assert_eq!(
        exit.code,
        Some(common::EXIT_RESTART),
        "{s} exited otherwise: {sup:?}"
    );
}

/// Stops the trickle, waits for the replicas to agree, stops the cluster
/// and checks every guarantee on the dumps; returns the final order log.
async fn stop_and_verify(t: &mut TestCluster, trickle: Trickle) -> Vec<Order> {
    let outcome = trickle.stop().await;
    assert!(
        outcome.rejected.is_empty(),
        "trades refused for good: {:?}",
        outcome.rejected
    );
    eprintln!(
        "trickle: {} acknowledged, {} unknown",
        outcome.acked.len(),
        outcome.unknown.len()
    );
    bazaar::verify::wait_converged(&t.cluster, Duration::from_secs(30))
        .await
        .expect("replicas converge after the space is freed");
    t.cluster.stop_all().await.expect("clean stop");
    let verdict =
        bazaar::verify::check(&t.cluster, &outcome.acked, &outcome.unknown).expect("dumps");
    assert_eq!(
        verdict.violations.total(),
        0,
        "{}: {:?}",
        verdict.violations,
        verdict.examples
    );
    assert!(verdict.replicas_identical, "{:?}", verdict.examples);
    t.cluster.dump_orders(1).expect("dump of order-1")
}

/// Finding 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_disk_full_fails_over_and_the_leader_heals() {
    let Some(disk) = SmallDisk::mount(DISK_BYTES) else {
        return;
    };
    let mut t = cluster_with_db_on(&disk, Service::Order(3)).await;
    let trickle = Trickle::start(&t.base, Duration::from_millis(50));
    wait_until(
        "20 trades acknowledged",
        Duration::from_secs(20),
        || async { trickle.acked() >= 20 },
    )
    .await;

    let filler = disk.fill();
    let full = Instant::now();
    eprintln!("leader's disk filled ({filler} bytes of filler)");
    let recovered = poll(
        "a trade sent after the disk filled to succeed",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { trickle.first_success_since(full) },
    )
    .await;
    eprintln!(
        "leader disk full: the first trade sent after the disk filled succeeded {recovered:?} after it"
    );
    let moved = poll(
        "the front-end to move the leadership away from order-3",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { t.frontend_leader().await.filter(|&id| id != 3) },
    )
    .await;
    eprintln!(
        "leadership moved to order-{moved} ({:?} after the disk filled)",
        full.elapsed()
    );
    let h = wait_health(
        &t,
        Service::Order(3),
        "storage full, not ready",
        Duration::from_secs(10),
        |h| !h.ready && h.storage == StorageState::Full,
    )
    .await;
    eprintln!("order-3 /health while full: {h:?}");
    let watch_from = Instant::now();
    while watch_from.elapsed() < STAY_AWAY_FOR {
        let leader = t.frontend_leader().await;
        assert!(
            leader.is_some_and(|id| id != 3),
            "the leadership is with the full replica (or lost: {leader:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let freed = Instant::now();
    disk.free();
    wait_health(
        &t,
        Service::Order(3),
        "ready with storage ok",
        Duration::from_secs(30),
        back_to_normal,
    )
    .await;
    eprintln!(
        "order-3 ready again {:?} after the space was freed",
        freed.elapsed()
    );
    assert_supervised_restart(&t, Service::Order(3));
    let healed = Instant::now();
    wait_until(
        "10 trades acknowledged after healing",
        Duration::from_secs(20),
        || async { trickle.successes_since(healed) >= 10 },
    )
    .await;
    assert_longest_gap(
        &trickle,
        full,
        RECOVERY_BOUND,
        "leader disk full, from the fill to after healing",
    );
    stop_and_verify(&mut t, trickle).await;
}

/// Every quantity each stock has after some prefix of `log` (in log order):
/// the only values a lookup may show.
fn explained_quantities(log: &[Order]) -> BTreeMap<String, BTreeSet<i128>> {
    let mut now: BTreeMap<String, i128> = bazaar::verify::initial_stocks()
        .into_iter()
        .map(|(name, q)| (name, i128::from(q)))
        .collect();
    let mut seen: BTreeMap<String, BTreeSet<i128>> = now
        .iter()
        .map(|(name, &q)| (name.clone(), BTreeSet::from([q])))
        .collect();
    for o in log {
        let q = now.entry(o.name.clone()).or_default();
        match o.kind {
            TradeKind::Buy => *q -= i128::from(o.quantity),
            TradeKind::Sell => *q += i128::from(o.quantity),
        }
        seen.entry(o.name.clone()).or_default().insert(*q);
    }
    seen
}

/// Looks up the trickle's stocks, at the catalog and through the
/// front-end, until stopped; returns `(when, source, name, quantity)` of
/// every answer.
fn sample_lookups(
    t: &TestCluster,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, String, String, u64)>> {
    let sources = [
        ("catalog", t.cluster.url(Service::Catalog)),
        ("frontend", t.base.clone()),
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (source, base) in &sources {
                for name in ["AAPL", "MSFT", "GOOG", "AMZN"] {
                    let Ok(r) = http.get(format!("{base}/stocks/{name}")).send().await else {
                        continue;
                    };
                    if r.status() != 200 {
                        continue;
                    }
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    if let Some(q) = body["data"]["quantity"].as_u64() {
                        seen.push((Instant::now(), source.to_string(), name.to_string(), q));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

/// Finding 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_disk_full_shows_no_phantom_and_heals_by_itself() {
    let Some(disk) = SmallDisk::mount(DISK_BYTES) else {
        return;
    };
    let mut t = cluster_with_db_on(&disk, Service::Catalog).await;
    let stop_sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_lookups(&t, stop_sampling.clone());
    let trickle = Trickle::start(&t.base, Duration::from_millis(50));
    wait_until(
        "20 trades acknowledged",
        Duration::from_secs(20),
        || async { trickle.acked() >= 20 },
    )
    .await;

    let filler = disk.fill();
    let full = Instant::now();
    eprintln!("catalog's disk filled ({filler} bytes of filler)");
    let h = wait_health(
        &t,
        Service::Catalog,
        "storage full, not ready",
        Duration::from_secs(10),
        |h| !h.ready && h.storage == StorageState::Full,
    )
    .await;
    eprintln!(
        "catalog /health while full ({:?} after the fill): {h:?}",
        full.elapsed()
    );
    // Trades fail while the catalog cannot write (the trickle retries them
    // with their keys); lookups go on meanwhile.
    wait_until(
        "10 failed trade attempts on the full disk",
        Duration::from_secs(20),
        || async { trickle.failures_since(full) >= 10 },
    )
    .await;

    let freed = Instant::now();
    disk.free();
    let recovered = poll(
        "a trade sent after the space was freed to succeed",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { trickle.first_success_since(freed) },
    )
    .await;
    eprintln!("catalog disk full: trades succeed again {recovered:?} after the space was freed");
    wait_health(
        &t,
        Service::Catalog,
        "ready with storage ok",
        Duration::from_secs(30),
        back_to_normal,
    )
    .await;
    assert_supervised_restart(&t, Service::Catalog);
    let healed = Instant::now();
    wait_until(
        "10 trades acknowledged after healing",
        Duration::from_secs(20),
        || async { trickle.successes_since(healed) >= 10 },
    )
    .await;

    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.await.expect("the sampler does not panic");
    assert_longest_gap(
        &trickle,
        freed,
        RECOVERY_BOUND,
        "catalog disk full, from freeing the space on",
    );
    let log = stop_and_verify(&mut t, trickle).await;
    let explained = explained_quantities(&log);
    let phantoms: Vec<_> = seen
        .iter()
        .filter(|(_, _, name, q)| {
            !explained
                .get(name)
                .is_some_and(|qs| qs.contains(&i128::from(*q)))
        })
        .collect();
    let while_full = seen
        .iter()
        .filter(|(at, ..)| (full..freed).contains(at))
        .count();
    eprintln!(
        "{} lookups checked against the final log, {while_full} of them while the disk was full",
        seen.len()
    );
    assert!(
        while_full > 0,
        "no lookup was answered while the disk was full"
    );
    assert!(
        phantoms.is_empty(),
        "lookups showed quantities no prefix of the final log explains: {:?}",
        &phantoms[..phantoms.len().min(10)]
    );
}

/// Finding 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_disk_full_leader_keeps_acknowledging_and_follower_heals() {
    let Some(disk) = SmallDisk::mount(DISK_BYTES) else {
        return;
    };
    let mut t = cluster_with_db_on(&disk, Service::Order(1)).await;
    let trickle = Trickle::start(&t.base, Duration::from_millis(50));
    wait_until(
        "20 trades acknowledged",
        Duration::from_secs(20),
        || async { trickle.acked() >= 20 },
    )
    .await;

    let filler = disk.fill();
    let full = Instant::now();
    eprintln!("follower's disk filled ({filler} bytes of filler)");
    let h = wait_health(
        &t,
        Service::Order(1),
        "storage full, not ready",
        Duration::from_secs(10),
        |h| !h.ready && h.storage == StorageState::Full,
    )
    .await;
    eprintln!(
        "order-1 /health while full ({:?} after the fill): {h:?}",
        full.elapsed()
    );
    wait_until(
        "20 trades acknowledged after the follower's disk filled",
        Duration::from_secs(20),
        || async { trickle.successes_since(full) >= 20 },
    )
    .await;
    let first = trickle
        .first_success_since(full)
        .expect("trades succeeded after the fill");
    eprintln!(
        "follower disk full: first trade acknowledged {first:?} after the fill, 20 within {:?}",
        full.elapsed()
    );
    assert!(first <= RECOVERY_BOUND, "the leader stalled for {first:?}");
    assert_eq!(t.frontend_leader().await, Some(3), "the leader stays");

    let freed = Instant::now();
    disk.free();
    wait_health(
        &t,
        Service::Order(1),
        "ready with storage ok",
        Duration::from_secs(30),
        back_to_normal,
    )
    .await;
    eprintln!(
        "order-1 ready again {:?} after the space was freed",
        freed.elapsed()
    );
    assert_supervised_restart(&t, Service::Order(1));
    let healed = Instant::now();
    wait_until(
        "10 trades acknowledged after healing",
        Duration::from_secs(20),
        || async { trickle.successes_since(healed) >= 10 },
    )
    .await;
    assert_longest_gap(
        &trickle,
        full,
        RECOVERY_BOUND,
        "follower disk full, from the fill to after healing",
    );
    stop_and_verify(&mut t, trickle).await;
}
