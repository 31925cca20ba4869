//! Finding 5 of issue 14 for an order replica: a follower whose sled `db`
//! file is damaged while it is stopped never runs with holes. Either it
//! refuses to start, with one line naming `--rebuild` and an exit status
//! that is not `common::EXIT_RESTART` (so no supervisor loops on it), or
//! it starts (sled took the damage for a torn tail and dropped what
//! followed) and, by the time it first answers `/health`, holds every
//! acknowledged order again, and serves each one right, also as the only
//! live replica. `order dump` of the damaged files never prints a wrong
//! order. `order --rebuild` then brings it back identical to its peers,
//! the damaged directory moved aside, not deleted.
//!
//! Two kinds of damage, one cluster each:
//! - 4 KiB overwritten in the middle of the `db` file (after `kill -9`);
//! - a few bytes flipped inside every stored copy of one order record,
//!   found by its idempotency key (after a clean stop).
//!
//! The cluster is supervised, as `bazaar up` runs it, so an exit with
//! `EXIT_RESTART` would be restarted (and fail the test).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use common::types::{Health, Order, Role, TradeKind};
use common::wait::poll;
use support::*;

/// The damaged follower.
const DAMAGED: u32 = 1;
/// The trade whose stored order record the flipping cases damage.
const TARGET: u64 = 150;
/// Its idempotency key: long and unique, so the file search finds only it.
const TARGET_KEY: &str = "flip-target-3c9e51a7d2b84f06";
/// Long enough for a debug build to start, catch up or refuse.
const SETTLE: Duration = Duration::from_secs(60);

/// The trade number `i` sends: balanced buys and sells of four stocks, so
/// no stock runs out, with quantities that differ from order to order.
fn trade_of(i: u64) -> (&'static str, TradeKind, u64) {
    const NAMES: [&str; 4] = ["AAPL", "MSFT", "GOOG", "AMZN"];
    let round = i / 4;
    let kind = if round.is_multiple_of(2) {
        TradeKind::Buy
    } else {
        TradeKind::Sell
    };
    let name = NAMES[usize::try_from(i % 4).expect("small")];
    (name, kind, 1 + (round / 2) % 3)
}

/// The idempotency key of trade `i`: long (the limit is 128), so that
/// few orders fill sled segments.
fn key_of(i: u64) -> String {
    if i == TARGET {
        TARGET_KEY.to_string()
    } else {
        format!("corruption-{i:0>100}")
    }
}

/// Trades sent at once.
const IN_FLIGHT: usize = 8;

/// The cases run one at a time: six clusters of five processes at once
/// are too much for a small machine, and clusters started together can
/// race for the same free port.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every replica runs and answers `/health` as itself: not another
/// process that took its port first (then the replica exits, unable to
/// listen, while its URL still answers).
async fn assert_replicas_are_ours(t: &mut TestCluster) {
    let ids: Vec<u32> = t.cluster.config.orders.iter().map(|o| o.id).collect();
    for id in ids {
        let s = Service::Order(id);
        let h = t.cluster.health(s).await;
        assert!(
            t.cluster.is_running(s) && h.as_ref().is_some_and(|h| h.id == Some(id)),
            "{s} is not the process answering {} ({h:?}): a port collision?",
            t.cluster.url(s)
        );
    }
}

/// What the follower went through between the trades and the damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// Nothing: the orders are in the log written since its only open, so
    /// sled's recovery reads over the damage.
    Fresh,
    /// It was stopped and started again: that open wrote a sled snapshot
    /// recording where every order is.
    RestartedSince,
    /// As `RestartedSince`, with enough orders that the log spans several
    /// sled segments (512 KiB each): recovery starts in the newest one and
    /// never reads the damaged older one. Finding 5 as reported.
    LongRestartedSince,
}

impl History {
    /// Orders acknowledged before the damage: a few hundred, enough that the
    /// `db` file is well over 8 KiB; for a long log, several segments.
    fn trades(self) -> u64 {
        match self {
            History::Fresh | History::RestartedSince => 300,
            History::LongRestartedSince => 2000,
        }
    }
}

/// Trade `i` through the front-end, retried with its key until it gets an
/// answer that is not a 503; returns the acknowledged order.
async fn trade(http: reqwest::Client, base: String, i: u64) -> Order {
    let (name, kind, quantity) = trade_of(i);
    let key = key_of(i);
    let body = serde_json::json!({"name": name, "quantity": quantity, "type": kind.as_str()});
    let (status, answer) = poll(
        &format!("an answer to trade {key} that is not a 503"),
        SETTLE,
        Duration::from_millis(50),
        || {
            let (http, base, body, key) = (&http, &base, &body, &key);
            async move {
                let r = http
                    .post(format!("{base}/orders"))
                    .header("idempotency-key", key)
                    .json(body)
                    .send()
                    .await
                    .ok()?;
                let status = r.status().as_u16();
                (status != 503).then_some(())?;
                Some((status, r.json::<serde_json::Value>().await.ok()?))
            }
        },
    )
    .await;
    assert_eq!(status, 200, "trade {i}: {answer}");
    Order {
        number: answer["data"]["transaction_number"]
            .as_u64()
            .expect("a transaction number"),
        name: name.to_string(),
        kind,
        quantity,
    }
}

/// Sends trades `0..n`, [`IN_FLIGHT`] at a time; returns the acknowledged
/// orders, which must be numbered 0..n, each once.
async fn trade_all(t: &TestCluster, n: u64) -> Vec<Order> {
    use futures_util::StreamExt;
    let mut acked: Vec<Order> = futures_util::stream::iter(0..n)
        .map(|i| trade(t.http.clone(), t.base.clone(), i))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    acked.sort_by_key(|o| o.number);
    assert_contiguous(&acked);
    acked
}

/// A cluster (supervised) that acknowledged `history.trades()` orders,
/// numbered 0.., all held by every replica; the follower restarted since,
/// if asked.
async fn traded_cluster(history: History) -> (TestCluster, Vec<Order>) {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    t.cluster.supervise(true).expect("supervision");
    assert_replicas_are_ours(&mut t).await;
    let started = Instant::now();
    let acked = trade_all(&t, history.trades()).await;
    let last = acked.last().map(|o| o.number);
    t.wait_replicas_at(last).await;
    eprintln!(
        "{history:?}: {} orders acknowledged in {:?}",
        acked.len(),
        started.elapsed()
    );
    if history != History::Fresh {
        let s = Service::Order(DAMAGED);
        t.cluster.stop(s).await.expect("stop the follower");
        t.cluster
            .start_and_wait(s)
            .await
            .expect("restart the follower");
        t.wait_replicas_at(last).await;
    }
    let leader = t.frontend_leader().await;
    assert_ne!(leader, Some(DAMAGED), "order-{DAMAGED} must be a follower");
    (t, acked)
}

fn db_dir(t: &TestCluster) -> PathBuf {
    t.cluster
        .config
        .order(DAMAGED)
        .expect("the damaged replica is in the config")
        .db_path
        .clone()
}

/// Overwrites 4 KiB in the middle of the file's written data with a
/// pattern no sled record holds, as a bad sector or a stray write would:
/// the aligned 4 KiB block nearest the middle of the file up to its last
/// non-zero byte that is mostly data (sled leaves zeroed gaps, the unused
/// ends of its 512 KiB segments, and may extend the file with zeros).
/// Returns where.
fn overwrite_middle(file: &Path) -> usize {
    const LEN: usize = 4096;
    let mut bytes = std::fs::read(file).expect("read db file");
    let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(
        written > 8 * LEN,
        "{} holds only {written} written bytes, not well over 8 KiB",
        file.display()
    );
    let data = |at: usize| bytes[at..at + LEN].iter().filter(|&&b| b != 0).count();
    let at = (0..written / LEN)
        .map(|block| block * LEN)
        .filter(|&at| data(at) >= LEN / 2)
        .min_by_key(|&at| (at + LEN / 2).abs_diff(written / 2))
        .expect("a block of data");
    let nonzero = data(at);
    for (i, b) in bytes[at..at + LEN].iter_mut().enumerate() {
        *b = u8::try_from(i % 251).expect("below 251") ^ 0xa5;
    }
    std::fs::write(file, &bytes).expect("write db file");
    eprintln!(
        "overwrote 4096 bytes at offset {at} of the db file ({} bytes, {written} up to its last \
         non-zero byte; {nonzero} of the overwritten bytes were not zero)",
        bytes.len()
    );
    at
}

/// Flips the bytes of the stock name in every stored copy of the order
/// record of trade [`TARGET`] (postcard: number, name, type, quantity, key; the name
/// lies just before the key). Returns the offsets of the copies.
fn flip_target_record(file: &Path, name: &str) -> Vec<usize> {
    let mut bytes = std::fs::read(file).expect("read db file");
    let key = TARGET_KEY.as_bytes();
    let mut flipped = Vec::new();
    let mut key_only = 0;
    let mut from = 0;
    while let Some(p) = find(&bytes[from..], key).map(|p| p + from) {
        from = p + key.len();
        // In an order record the name (4 bytes) ends a few bytes before the
        // key's length byte; the key index holds the key alone.
        let window = p.saturating_sub(12)..p;
        match find(&bytes[window.clone()], name.as_bytes()) {
            Some(q) => {
                let at = window.start + q;
                for b in &mut bytes[at..at + name.len()] {
                    *b ^= 0x20; // "GOOG" becomes "goog": plausible, and wrong
                }
                flipped.push(at);
            }
            None => key_only += 1,
        }
    }
    assert!(
        !flipped.is_empty(),
        "no stored copy of trade {TARGET}'s order record found in {} ({key_only} copies of its key alone)",
        file.display()
    );
    std::fs::write(file, &bytes).expect("write db file");
    eprintln!(
        "flipped the name bytes of trade {TARGET}'s order ({name}) in {} stored copies at offsets \
         {flipped:?}; the key alone appears {key_only} more times (the key index)",
        flipped.len()
    );
    flipped
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Copies a directory tree (sled's: files and `blobs/`).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// `order dump --id N` on the stopped, damaged directory, through the real
/// binary. Asserts it prints no wrong order: it fails with a clear error
/// naming `--rebuild`, or prints a prefix of `good` (stdout is checked
/// also when it fails). The dump opens the files with sled, which may
/// truncate what it takes for a torn tail, so it runs on the damaged
/// directory and the directory is put back as it was before the start.
fn dump_damaged(t: &TestCluster, good: &[Order]) {
    let db = db_dir(t);
    let pristine = db.with_extension("pristine-copy");
    copy_dir(&db, &pristine);
    let before = std::fs::read(db.join("db")).expect("db file");
    let out = Command::new(t.cluster.bin("order"))
        .args(["dump", "--id", &DAMAGED.to_string(), "--config"])
        .arg(&t.cluster.config_path)
        .output()
        .expect("order dump runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let printed: Vec<Order> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad dump line {l:?}: {e}")))
        .collect();
    assert!(
        printed.len() <= good.len() && printed[..] == good[..printed.len()],
        "order dump of the damaged files printed orders that are not the leader's \
         (status {}, {} lines; stderr: {stderr})",
        out.status,
        printed.len()
    );
    if out.status.success() {
        eprintln!(
            "order dump of the damaged files succeeded with {} of {} orders (a prefix of the \
             leader's)",
            printed.len(),
            good.len()
        );
    } else {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        eprintln!(
            "order dump of the damaged files failed ({}) after printing {} orders: {}",
            out.status,
            printed.len(),
            lines.join(" | ")
        );
        assert!(
            stderr.contains("--rebuild"),
            "a failed dump names the way out: {stderr}"
        );
    }
    let after = std::fs::read(db.join("db")).expect("db file");
    let changed: Vec<usize> = (0..before.len().max(after.len()))
        .filter(|&i| before.get(i) != after.get(i))
        .collect();
    if let (Some(first), Some(last)) = (changed.first(), changed.last()) {
        eprintln!(
            "(the dump's open wrote to the damaged db file: {} bytes differ, offsets {first} to \
             {last}; {} bytes before, {} after)",
            changed.len(),
            before.len(),
            after.len()
        );
    }
    std::fs::remove_dir_all(&db).expect("remove the dumped directory");
    std::fs::rename(&pristine, &db).expect("put the damaged directory back");
}

/// How the damaged replica's start ended.
enum Start {
    /// It exited: its status and the lines it wrote this time.
    Refused {
        how: String,
        code: Option<i32>,
        lines: Vec<String>,
    },
    /// It answered `/health`: its first answer.
    Serving(Health),
}

/// Starts the damaged replica and waits until it answers `/health` or
/// exits (seen by the supervisor, which would restart an exit with
/// `EXIT_RESTART`).
async fn start_damaged(t: &mut TestCluster) -> (Start, Duration) {
    let s = Service::Order(DAMAGED);
    let log = t.cluster.log_path(s);
    let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
    let started = Instant::now();
    t.cluster.start(s).expect("start the damaged replica");
    let (t, log) = (&*t, &log);
    let outcome = poll(
        &format!("{s} to answer /health or exit"),
        SETTLE,
        Duration::from_millis(20),
        || async move {
            if let Some(h) = t.cluster.health(s).await {
                return Some(Start::Serving(h));
            }
            let exit = t.cluster.supervised(s).last_exit?;
            let text = std::fs::read(log).unwrap_or_default();
            let from = usize::try_from(logged).unwrap_or(0).min(text.len());
            let lines = String::from_utf8_lossy(&text[from..])
                .lines()
                .map(str::to_string)
                .collect();
            Some(Start::Refused {
                how: exit.how(),
                code: exit.code,
                lines,
            })
        },
    )
    .await;
    (outcome, started.elapsed())
}

/// Asserts the damaged replica refused properly: one line naming
/// `--rebuild`, a non-zero exit that is not `EXIT_RESTART`, and it stays down.
fn assert_refused(t: &TestCluster, how: &str, code: Option<i32>, lines: &[String]) {
    let naming: Vec<&String> = lines.iter().filter(|l| l.contains("--rebuild")).collect();
    eprintln!(
        "order-{DAMAGED} refused to start ({how}); it wrote {} lines:",
        lines.len()
    );
    for l in lines.iter().take(12) {
        eprintln!("    {l}");
    }
    assert!(
        code.is_some_and(|c| c != 0 && c != common::EXIT_RESTART),
        "a damaged replica exits non-zero and not with EXIT_RESTART ({}); it ended with {how}",
        common::EXIT_RESTART
    );
    assert_eq!(
        naming.len(),
        1,
        "one line names --rebuild; the start wrote: {lines:#?}"
    );
    let state = t.cluster.supervised(Service::Order(DAMAGED)).state;
    assert_eq!(
        state, "exited",
        "no restart is pending for a damaged replica"
    );
}

/// GETs every acknowledged order from `base` (`/orders/{n}`) and asserts
/// each answer is 200 with exactly that order.
async fn assert_serves_every_order(t: &TestCluster, base: &str, acked: &[Order], via: &str) {
    for o in acked {
        let url = format!("{base}/orders/{}", o.number);
        let r = t.http.get(&url).send().await.expect("GET reaches it");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        let got: Option<Order> = serde_json::from_value(body["data"].clone()).ok();
        assert!(
            status == 200 && got.as_ref() == Some(o),
            "GET /orders/{} {via} answered {status} {body}, not {o:?}",
            o.number
        );
    }
    eprintln!("every one of {} orders served right {via}", acked.len());
}

/// The damaged replica started: it must hold every order already, serve
/// each right (directly, and through the front-end as the only live
/// replica, without leader re-selections), and end identical to the others.
async fn check_serving(t: &mut TestCluster, h: &Health, acked: &[Order]) {
    let last = acked.last().map(|o| o.number);
    eprintln!(
        "order-{DAMAGED} started and answered /health: role {}, highest {:?}, ready {}, storage {:?}",
        h.role.as_str(),
        h.highest,
        h.ready,
        h.storage
    );
    assert_eq!(
        h.id,
        Some(DAMAGED),
        "order-{DAMAGED} answers as itself: {h:?}"
    );
    assert_eq!(
        h.highest, last,
        "a replica serves only once it holds every order again (first /health: {h:?})"
    );
    assert_ne!(h.role, Role::CatchingUp, "first /health: {h:?}");
    let direct = t.cluster.url(Service::Order(DAMAGED));
    assert_serves_every_order(t, &direct, acked, &format!("by order-{DAMAGED} itself")).await;

    // As the only live replica, behind the front-end.
    let others: Vec<u32> = t
        .cluster
        .config
        .orders
        .iter()
        .map(|o| o.id)
        .filter(|&id| id != DAMAGED)
        .collect();
    let before = t.cluster.health(Service::Frontend(1)).await;
    for &id in &others {
        t.cluster.kill(Service::Order(id)).expect("kill a peer");
    }
    let fe = wait_health(
        t,
        Service::Frontend(1),
        &format!("order-{DAMAGED} as leader"),
        SETTLE,
        |h| h.id == Some(DAMAGED),
    )
    .await;
    assert_serves_every_order(
        t,
        &t.base,
        acked,
        &format!("through the front-end with order-{DAMAGED} the only replica"),
    )
    .await;
    let after = t.cluster.health(Service::Frontend(1)).await;
    eprintln!(
        "leader (id, epoch): {:?} before the peers were killed, ({:?}, {}) before the reads, \
         {:?} after",
        before.map(|h| (h.id, h.epoch)),
        fe.id,
        fe.epoch,
        after.as_ref().map(|h| (h.id, h.epoch))
    );
    assert_eq!(
        after.map(|h| (h.id, h.epoch)),
        Some((Some(DAMAGED), fe.epoch)),
        "reads of held orders cause no leader re-selection"
    );
    for &id in &others {
        t.cluster
            .start_and_wait(Service::Order(id))
            .await
            .expect("restart a peer");
    }
    t.wait_replicas_at(last).await;
    assert_identical(t, acked);
}

/// Every replica's `order dump` is `acked`, in order.
fn assert_identical(t: &TestCluster, acked: &[Order]) {
    for o in &t.cluster.config.orders {
        let dump = t
            .cluster
            .dump_orders(o.id)
            .unwrap_or_else(|e| panic!("dump of order-{}: {e:#}", o.id));
        assert_contiguous(&dump);
        assert!(
            dump == acked,
            "order-{} holds {} orders that are not the {} acknowledged",
            o.id,
            dump.len(),
            acked.len()
        );
    }
}

/// `order --id N --rebuild`: it comes back identical to its peers, the old
/// directory kept as `<db>.moved-*`, and trades go on.
async fn rebuild(t: &mut TestCluster, acked: &mut Vec<Order>) {
    let s = Service::Order(DAMAGED);
    t.cluster.stop(s).await.expect("stop the damaged replica");
    let db = db_dir(t);
    let started = Instant::now();
    t.cluster.set_args(s, &["--rebuild"]);
    let back = t.cluster.start_and_wait(s).await;
    t.cluster.set_args(s, &[]);
    back.expect("the replica starts with --rebuild");
    let last = acked.last().map(|o| o.number);
    t.wait_replicas_at(last).await;
    eprintln!(
        "order-{DAMAGED} --rebuild: healthy and holding all {} orders {:?} after its start",
        acked.len(),
        started.elapsed()
    );
    let name = db.file_name().expect("db dir name").to_string_lossy();
    let moved: Vec<PathBuf> = std::fs::read_dir(db.parent().expect("db parent"))
        .expect("read db parent")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.moved-"))
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(moved.len(), 1, "the old directory is moved aside once");
    assert!(
        moved[0].join("db").is_file(),
        "the moved-aside directory keeps its db file: {}",
        moved[0].display()
    );
    eprintln!("old directory kept at {}", moved[0].display());
    assert_identical(t, acked);
    // Trades go on, on all three.
    let next = u64::try_from(acked.len()).expect("few orders");
    let (name, kind, quantity) = trade_of(next);
    let (status, body) = t
        .trade_until_done(name, kind, quantity, "after-rebuild")
        .await;
    assert_eq!(status, 200, "trade after the rebuild: {body}");
    assert_eq!(body["data"]["transaction_number"].as_u64(), Some(next));
    acked.push(Order {
        number: next,
        name: name.to_string(),
        kind,
        quantity,
    });
    t.wait_replicas_at(Some(next)).await;
    assert_identical(t, acked);
}

/// What the test does after the damage, whatever the damage was.
async fn after_damage(mut t: TestCluster, mut acked: Vec<Order>, case: &str) {
    dump_damaged(&t, &acked);
    // The front-end serves every acknowledged order right meanwhile.
    assert_serves_every_order(&t, &t.base, &acked, "through the front-end").await;
    let (outcome, took) = start_damaged(&mut t).await;
    match outcome {
        Start::Refused { how, code, lines } => {
            eprintln!("{case}: order-{DAMAGED} exited {took:?} after its start");
            assert_refused(&t, &how, code, &lines);
        }
        Start::Serving(h) => {
            eprintln!("{case}: order-{DAMAGED} answered /health {took:?} after its start");
            check_serving(&mut t, &h, &acked).await;
        }
    }
    rebuild(&mut t, &mut acked).await;
    let stocks = t.cluster.dump_catalog().expect("catalog dump");
    let orders = t.cluster.dump_orders(DAMAGED).expect("dump");
    assert_conservation(&stocks, &orders, initial_quantity());
    eprintln!("{case}: done");
}

/// The initial quantity of every stock of the scratch cluster (one figure
/// for all of them in the shipped stocks file).
fn initial_quantity() -> u64 {
    let stocks = common::stocks::parse(bazaar::cluster::SHIPPED_STOCKS).expect("stocks");
    let first = stocks.first().expect("a stock").quantity;
    assert!(
        stocks.iter().all(|s| s.quantity == first),
        "the shipped stocks start equal"
    );
    first
}

/// What is done to the follower's `db` file while it is stopped.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// 4 KiB overwritten in the middle, after `kill -9`.
    OverwriteMiddle,
    /// The name bytes of every stored copy of trade [`TARGET`]'s order record
    /// flipped, after a clean stop.
    FlipRecord,
}

/// One case: trade, (restart the follower,) stop it, damage its file, then
/// [`after_damage`].
async fn run_case(damage: Damage, history: History) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (mut t, acked) = traded_cluster(history).await;
    let s = Service::Order(DAMAGED);
    let file = db_dir(&t).join("db");
    match damage {
        Damage::OverwriteMiddle => {
            t.cluster.kill(s).expect("kill -9 the follower");
            overwrite_middle(&file);
        }
        Damage::FlipRecord => {
            t.cluster.stop(s).await.expect("stop the follower");
            flip_target_record(&file, trade_of(TARGET).0);
        }
    }
    after_damage(t, acked, &format!("{damage:?}, {history:?}")).await;
}

/// Finding 5 as reported: a long log, the follower restarted since its
/// orders were written (so sled's snapshot says where they are and its
/// recovery never reads the damaged, older segment), 4 KiB overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_middle_of_a_long_log_is_never_served_around() {
    run_case(Damage::OverwriteMiddle, History::LongRestartedSince).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_an_order_of_a_long_log_are_never_served() {
    run_case(Damage::FlipRecord, History::LongRestartedSince).await;
}

/// The follower restarted since its orders were written, in a log of one
/// segment: sled's recovery reads over the damage and finds it contradicts
/// its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_middle_of_a_restarted_follower_is_never_served_around() {
    run_case(Damage::OverwriteMiddle, History::RestartedSince).await;
}

/// The damage lies in the log written since the follower's only open: sled
/// takes it for a torn tail and drops what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_middle_of_a_fresh_follower_is_never_served_around() {
    run_case(Damage::OverwriteMiddle, History::Fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_an_order_of_a_restarted_follower_are_never_served() {
    run_case(Damage::FlipRecord, History::RestartedSince).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_an_order_of_a_fresh_follower_are_never_served() {
    run_case(Damage::FlipRecord, History::Fresh).await;
}
