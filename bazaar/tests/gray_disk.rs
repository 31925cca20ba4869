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
use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use bazaar::tmpfs::Tmpfs;
use common::types::{Health, Order, StorageState, TradeKind};
use common::wait::wait_until;
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

/// The small disk, or `None` after printing why the test skips.
fn small_disk() -> Option<Tmpfs> {
    Tmpfs::mount("bazaar-small-disk-", DISK_BYTES)
        .inspect_err(|why| eprintln!("SKIPPED: {why}"))
        .ok()
}

/// Fills `disk`; returns when, after printing how much filler it took.
fn fill(disk: &Tmpfs, whose: &str) -> Instant {
    let filler = disk.fill().expect("filling the small disk");
    let full = Instant::now();
    eprintln!("{whose} disk filled ({filler} bytes of filler)");
    full
}

/// A supervised cluster whose `service` keeps its database on `disk`.
async fn cluster_with_db_on(disk: &Tmpfs, service: Service) -> TestCluster {
    let name = service.to_string();
    let mut t = TestCluster::prepare(ScratchOptions {
        db_paths: vec![(service, disk.path().join(name))],
        ..ScratchOptions::default()
    });
    t.cluster.supervise(true).expect("supervision");
    t.launch().await;
    t.wait_first_leader().await;
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

/// A trickle of trades on `t`, once 20 of them are acknowledged.
async fn start_trickle(t: &TestCluster) -> Trickle {
    let trickle = Trickle::start(&t.base, Duration::from_millis(50));
    trickle.wait_acked(20, None, "").await;
    trickle
}

/// Waits until `s` reports its storage full; returns that `/health`.
async fn wait_full(t: &TestCluster, s: Service) -> Health {
    wait_health(
        t,
        s,
        "storage full, not ready",
        Duration::from_secs(10),
        |h| !h.ready && h.storage == StorageState::Full,
    )
    .await
}

/// Removes the filler of `disk`; returns when.
fn free(disk: &Tmpfs) -> Instant {
    let freed = Instant::now();
    disk.free().expect("remove the filler");
    freed
}

/// After the space was `freed`: `s` comes back to normal (printed how
/// soon), restarted by the supervisor, and 10 trades are acknowledged
/// after that.
async fn wait_healed(t: &TestCluster, trickle: &Trickle, s: Service, freed: Instant) {
    wait_health(
        t,
        s,
        "ready with storage ok",
        Duration::from_secs(30),
        back_to_normal,
    )
    .await;
    eprintln!(
        "{s} ready again {:?} after the space was freed",
        freed.elapsed()
    );
    assert_supervised_restart(t, s);
    let healed = Instant::now();
    trickle.wait_acked(10, Some(healed), " after healing").await;
}

/// The three tests run one at a time: each times a recovery, and three
/// clusters at once on two cores would measure the machine, not the system.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the replicas converge after, for [`stop_and_verify`].
const CONVERGE_AFTER: &str = "after the space is freed";

/// Finding 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_disk_full_fails_over_and_the_leader_heals() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = small_disk() else {
        return;
    };
    let mut t = cluster_with_db_on(&disk, Service::Order(3)).await;
    let trickle = start_trickle(&t).await;

    let full = fill(&disk, "leader's");
    let recovered = trickle.wait_recovered(full, "the disk filled").await;
    eprintln!(
        "leader disk full: the first trade sent after the disk filled succeeded {recovered:?} after it"
    );
    t.wait_leader_moved_from(3, full, "the disk filled").await;
    let h = wait_full(&t, Service::Order(3)).await;
    eprintln!("order-3 /health while full: {h:?}");
    t.watch_leader(STAY_AWAY_FOR, async |leader| {
        assert!(
            leader.is_some_and(|id| id != 3),
            "the leadership is with the full replica (or lost: {leader:?})"
        );
    })
    .await;

    let freed = free(&disk);
    wait_healed(&t, &trickle, Service::Order(3), freed).await;
    assert_longest_gap(
        &trickle,
        full,
        RECOVERY_BOUND,
        "leader disk full, from the fill to after healing",
    );
    stop_and_verify(&mut t, trickle, CONVERGE_AFTER).await;
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
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = small_disk() else {
        return;
    };
    let mut t = cluster_with_db_on(&disk, Service::Catalog).await;
    let stop_sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_lookups(&t, stop_sampling.clone());
    let trickle = start_trickle(&t).await;

    let full = fill(&disk, "catalog's");
    let h = wait_full(&t, Service::Catalog).await;
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

    let freed = free(&disk);
    let recovered = trickle.wait_recovered(freed, "the space was freed").await;
    eprintln!("catalog disk full: trades succeed again {recovered:?} after the space was freed");
    wait_healed(&t, &trickle, Service::Catalog, freed).await;

    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.await.expect("the sampler does not panic");
    assert_longest_gap(
        &trickle,
        freed,
        RECOVERY_BOUND,
        "catalog disk full, from freeing the space on",
    );
    stop_and_verify(&mut t, trickle, CONVERGE_AFTER).await;
    let log = t.cluster.dump_orders(1).expect("dump of order-1");
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
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = small_disk() else {
        return;
    };
    let mut t = cluster_with_db_on(&disk, Service::Order(1)).await;
    let trickle = start_trickle(&t).await;

    let full = fill(&disk, "follower's");
    let h = wait_full(&t, Service::Order(1)).await;
    eprintln!(
        "order-1 /health while full ({:?} after the fill): {h:?}",
        full.elapsed()
    );
    trickle
        .wait_acked(20, Some(full), " after the follower's disk filled")
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

    let freed = free(&disk);
    wait_healed(&t, &trickle, Service::Order(1), freed).await;
    assert_longest_gap(
        &trickle,
        full,
        RECOVERY_BOUND,
        "follower disk full, from the fill to after healing",
    );
    stop_and_verify(&mut t, trickle, CONVERGE_AFTER).await;
}
