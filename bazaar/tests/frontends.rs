//! Several front-ends on one cluster (issue 16), on the real binaries: the
//! leader epoch stays put while nothing fails, every front-end routes to the
//! same new leader soon after `kill -9` of the leader, a front-end killed and
//! resumed serves again from an empty cache, and `bazaar up --frontends 2`
//! runs, lists, kills and resumes the second one.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service, bin_dir, write_scratch_config};
use common::config::Config;
use common::types::{ClusterStatus, Health, Order, Role, TradeKind};
use common::wait::{poll, wait_until, wait_until_blocking};
use serde_json::{Value, json};
use support::*;

/// What the issue bounds the switch to a new leader by.
const AGREE_WITHIN: Duration = Duration::from_secs(2);

fn options(frontends: u32) -> ScratchOptions {
    ScratchOptions {
        frontends,
        ..ScratchOptions::default()
    }
}

fn frontends(t: &TestCluster) -> Vec<(u32, String)> {
    let all = t.cluster.config.frontends();
    all.iter().map(|f| (f.id, f.url())).collect()
}

/// The leader (`id`) and epoch every front-end's `/health` reports, and
/// each live replica's role and epoch; `None` for one that does not answer.
#[derive(Debug, Clone, PartialEq)]
struct View {
    frontends: Vec<Option<(Option<u32>, u64)>>,
    replicas: Vec<(u32, Option<(Role, u64)>)>,
}

impl View {
    async fn of(t: &TestCluster) -> View {
        let mut view = View {
            frontends: Vec::new(),
            replicas: Vec::new(),
        };
        for s in t.cluster.frontends() {
            let h = t.cluster.health(s).await;
            view.frontends.push(h.map(|h| (h.id, h.epoch)));
        }
        for o in &t.cluster.config.orders {
            let h: Option<Health> = t.cluster.health(Service::Order(o.id)).await;
            view.replicas.push((o.id, h.map(|h| (h.role, h.epoch))));
        }
        view
    }

    /// `(leader, epoch)` when every front-end answers with that leader and
    /// epoch and every replica that answers holds that epoch, the leader
    /// as `leader`.
    fn agreed(&self) -> Option<(u32, u64)> {
        let first = self.frontends.first().copied().flatten()?;
        let (Some(leader), epoch) = first else {
            return None;
        };
        let fronts = self.frontends.iter().all(|f| *f == Some(first));
        let replicas = self.replicas.iter().all(|(id, h)| match h {
            None => *id != leader,
            Some((role, e)) => *e == epoch && (*id != leader || *role == Role::Leader),
        });
        (fronts && replicas).then_some((leader, epoch))
    }

    /// Every epoch in the view.
    fn epochs(&self) -> impl Iterator<Item = u64> + '_ {
        let fronts = self.frontends.iter().flatten().map(|(_, e)| *e);
        fronts.chain(self.replicas.iter().filter_map(|(_, h)| h.map(|(_, e)| e)))
    }
}

/// Waits until the front-ends and replicas agree on one leader and epoch.
async fn agreement(t: &TestCluster, what: &str, timeout: Duration) -> (u32, u64) {
    let last = std::sync::Mutex::new(None);
    let last = &last;
    common::wait::try_poll(what, timeout, Duration::from_millis(20), || async move {
        let view = View::of(t).await;
        let agreed = view.agreed();
        *last.lock().expect("lock") = Some(view);
        agreed
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; last seen {:?}", last.lock().expect("lock")))
}

async fn trade_via(
    t: &TestCluster,
    url: &str,
    name: &str,
    kind: TradeKind,
    q: u64,
) -> (u16, Value) {
    let body = json!({"name": name, "quantity": q, "type": kind.as_str()});
    let r = t
        .http
        .post(format!("{url}/orders"))
        .json(&body)
        .send()
        .await
        .expect("POST reaches the front-end");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_via(t: &TestCluster, url: &str, path: &str) -> (u16, Value) {
    let r = t
        .http
        .get(format!("{url}{path}"))
        .send()
        .await
        .expect("GET reaches the front-end");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn status_of(t: &TestCluster, url: &str) -> ClusterStatus {
    let (status, body) = get_via(t, url, "/status").await;
    assert_eq!(status, 200, "{url}/status: {body}");
    serde_json::from_value(body).expect("a /status answer")
}

/// Three front-ends and no fault: for `period` the leader epoch reported by
/// every front-end and every replica stays where it was, while trades and
/// lookups go through each front-end in turn.
async fn epoch_holds_without_a_fault(period: Duration) {
    let t = TestCluster::start(options(3)).await;
    let fronts = frontends(&t);
    let (leader, epoch) = agreement(&t, "one leader and epoch", Duration::from_secs(20)).await;
    let mut epochs = BTreeSet::from([epoch]);
    let mut disagreements = 0;
    let (mut samples, mut trades) = (0usize, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let until = Instant::now() + period;
    while Instant::now() < until {
        tick.tick().await;
        let (_, url) = &fronts[samples % fronts.len()];
        let kind = if samples % 2 == 0 {
            TradeKind::Buy
        } else {
            TradeKind::Sell
        };
        let (status, body) = trade_via(&t, url, "AAPL", kind, 1).await;
        assert_eq!(status, 200, "trade through {url}: {body}");
        trades += 1;
        assert_eq!(get_via(&t, url, "/stocks/MSFT").await.0, 200);
        let view = View::of(&t).await;
        epochs.extend(view.epochs());
        if view.agreed() != Some((leader, epoch)) {
            disagreements += 1;
            eprintln!("sample {samples}: {view:?}");
        }
        samples += 1;
    }
    let mut selections = Vec::new();
    for (id, url) in &fronts {
        selections.push((*id, status_of(&t, url).await.selections));
    }
    eprintln!(
        "3 front-ends, {period:?} without a fault: leader order-{leader}, epochs seen {epochs:?} \
         ({} bumps) over {samples} samples, {trades} trades; leader selections per front-end {selections:?}",
        epochs.len() - 1
    );
    assert_eq!(
        epochs,
        BTreeSet::from([epoch]),
        "the epoch changed with nothing failing"
    );
    assert_eq!(disagreements, 0, "a sample saw another leader or epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_front_ends_keep_the_epoch_over_a_quiet_10_s() {
    epoch_holds_without_a_fault(Duration::from_secs(10)).await;
}

/// The figure: a quiet minute. `cargo test -p bazaar --test
/// frontends -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long; the 10 s form runs by default"]
async fn three_front_ends_keep_the_epoch_over_a_quiet_minute() {
    epoch_holds_without_a_fault(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_routes_to_the_same_new_leader_within_2_s_of_a_kill() {
    let mut t = TestCluster::start(options(3)).await;
    let fronts = frontends(&t);
    let (leader, epoch) = agreement(&t, "one leader and epoch", Duration::from_secs(20)).await;
    let trickles: Vec<Trickle> = fronts
        .iter()
        .map(|(id, url)| Trickle::start_keyed(url, Duration::from_millis(40), &format!("fe{id}")))
        .collect();
    wait_until(
        "trades through every front-end",
        Duration::from_secs(20),
        || {
            let ok = trickles.iter().all(|tr| tr.acked() >= 5);
            async move { ok }
        },
    )
    .await;

    let killed_at = Instant::now();
    t.cluster.kill(Service::Order(leader)).unwrap();
    let (new_leader, after) = poll(
        "every front-end to route to one new leader",
        Duration::from_secs(15),
        Duration::from_millis(10),
        || async {
            let mut ids = BTreeSet::new();
            for s in t.cluster.frontends() {
                ids.insert(t.cluster.health(s).await.and_then(|h| h.id));
            }
            let only = (ids.len() == 1)
                .then(|| ids.pop_first())
                .flatten()
                .flatten();
            only.filter(|&id| id != leader)
                .map(|id| (id, killed_at.elapsed()))
        },
    )
    .await;
    let (settled, new_epoch) = agreement(
        &t,
        "one leader and epoch after the kill",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(settled, new_leader);
    // It holds: no further selection once the new leader serves.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..20 {
        tick.tick().await;
        assert_eq!(
            View::of(&t).await.agreed(),
            Some((new_leader, new_epoch)),
            "the leader or epoch moved again after the failover"
        );
    }
    let gaps: Vec<String> = trickles
        .iter()
        .map(|tr| format!("{:?}", tr.longest_gap_since(killed_at).unwrap_or_default()))
        .collect();
    eprintln!(
        "kill -9 of order-{leader} (epoch {epoch}): every front-end routes to order-{new_leader} \
         after {after:?}; epoch {epoch} -> {new_epoch} ({} bumps); longest time without an \
         acknowledged trade per front-end: {}",
        new_epoch - epoch,
        gaps.join(", ")
    );
    assert!(
        after <= AGREE_WITHIN,
        "the front-ends took {after:?} to agree on the new leader (bound {AGREE_WITHIN:?})"
    );
    assert!(new_epoch > epoch, "a new leader has a new epoch");

    let mut acked = Acked::new();
    for tr in trickles {
        let out = tr.stop().await;
        assert!(
            out.rejected.is_empty(),
            "refused trades: {:?}",
            out.rejected
        );
        assert!(
            out.unknown.is_empty(),
            "trades without an answer: {:?}",
            out.unknown
        );
        for a in out.acked {
            let order = Order {
                number: a.number,
                name: a.name,
                kind: a.kind,
                quantity: a.quantity,
            };
            assert!(
                acked.insert(a.number, order).is_none(),
                "number {} twice",
                a.number
            );
        }
    }
    let highest = acked.keys().next_back().copied();
    t.cluster
        .start_and_wait(Service::Order(leader))
        .await
        .unwrap();
    t.wait_replicas_at(highest).await;
    t.cluster.stop_all().await.unwrap();
    let logs: Vec<Vec<Order>> = (1..=3)
        .map(|id| t.cluster.dump_orders(id).unwrap())
        .collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[1], logs[2]);
    assert_contiguous(&logs[0]);
    assert_eq!(logs[0], acked.values().cloned().collect::<Vec<_>>());
    assert_conservation(&t.cluster.dump_catalog().unwrap(), &logs[0], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_killed_and_resumed_serves_from_an_empty_cache() {
    let mut t = TestCluster::start(options(2)).await;
    let second = t.cluster.config.frontend(2).unwrap().url();
    // Warm its cache (with several front-ends it fills only while it holds
    // the catalog's cache lease, which comes soon after start-up).
    let (second_ref, t_ref) = (&second, &t);
    wait_until(
        "front-end 2 to cache three stocks",
        Duration::from_secs(20),
        || async move {
            for name in ["AAPL", "MSFT", "GOOG"] {
                let (status, _) = get_via(t_ref, second_ref, &format!("/stocks/{name}")).await;
                assert_eq!(status, 200);
            }
            status_of(t_ref, second_ref).await.cache.entries.len() == 3
        },
    )
    .await;

    t.cluster.kill(Service::Frontend(2)).unwrap();
    assert!(t.cluster.health(Service::Frontend(2)).await.is_none());
    // Front-end 1 serves meanwhile.
    let (status, body) = t.trade("AAPL", TradeKind::Buy, 7, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(t.quantity("AAPL").await, 93);

    t.cluster
        .start_and_wait(Service::Frontend(2))
        .await
        .unwrap();
    let view = status_of(&t, &second).await;
    assert!(view.cache.entries.is_empty(), "{:?}", view.cache.entries);
    let listed: Vec<&str> = view.services.iter().map(|s| s.service.as_str()).collect();
    assert!(
        listed.contains(&"frontend") && listed.contains(&"frontend-2"),
        "{listed:?}"
    );
    let (status, body) = get_via(&t, &second, "/stocks/AAPL").await;
    assert_eq!(
        (status, &body["data"]["quantity"]),
        (200, &json!(93)),
        "{body}"
    );
    let (status, body) = trade_via(&t, &second, "AAPL", TradeKind::Sell, 2).await;
    assert_eq!(status, 200, "trade through the resumed front-end: {body}");
    let n = body["data"]["transaction_number"].as_u64().unwrap();
    let (status, body) = get_via(&t, &second, &format!("/orders/{n}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"number": n, "name": "AAPL", "type": "sell", "quantity": 2})
    );
    assert_eq!(t.quantity("AAPL").await, 95);
}

// ----- `bazaar up --frontends 2`, in the style of tests/launcher.rs -----

fn status_json(config: &Path) -> Value {
    let out = bazaar(config, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json")
}

/// `service -> up` of a `bazaar status --json`.
fn ups(status: &Value) -> Vec<(String, bool)> {
    let services = status["services"].as_array().cloned().unwrap_or_default();
    services
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or("").to_string(),
                s["up"] == true,
            )
        })
        .collect()
}

#[test]
fn bazaar_up_runs_two_front_ends_and_kills_and_resumes_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_scratch_config(dir.path(), &ScratchOptions::default()).unwrap();
    let shipped = std::fs::read_to_string(&config_path).unwrap();
    let mut up = Up::start(&config_path, &["--frontends", "2"], Stdio::null());
    let expected: Vec<(String, bool)> = [
        "catalog",
        "order-1",
        "order-2",
        "order-3",
        "frontend",
        "frontend-2",
    ]
    .iter()
    .map(|s| (s.to_string(), true))
    .collect();
    wait_until_blocking(
        "bazaar up to run every service",
        Duration::from_secs(60),
        || ups(&status_json(&config_path)) == expected,
    );
    let derived = dir.path().join("data/run/cluster.yaml");
    let cluster = Config::load(&derived).expect("the derived config");
    assert_eq!(
        std::fs::read_to_string(&config_path).unwrap(),
        shipped,
        "the config is untouched"
    );
    let fe2 = cluster
        .frontend(2)
        .expect("front-end 2 in the derived config");
    assert!(fe2.port > cluster.frontend.port, "{fe2:?}");

    // Both serve, with the same leader.
    let status = status_json(&config_path);
    let leaders: Vec<&Value> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["service"].as_str().unwrap().starts_with("frontend"))
        .map(|s| &s["health"]["id"])
        .collect();
    assert_eq!(leaders.len(), 2, "{status}");
    assert_eq!(leaders[0], leaders[1], "{status}");
    let client = |port: u16| {
        let out = Command::new(bin_dir().unwrap().join("client"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--json"])
            .args(["--n-request", "20", "--prob", "0.5", "--seed", "3"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let summary = client(fe2.port);
    assert_eq!(summary["verified"], true, "{summary}");
    assert_eq!(summary["trade"]["errors"], 0, "{summary}");
    let table = String::from_utf8(bazaar(&config_path, &["status"]).stdout).unwrap();
    assert!(
        table.lines().any(|l| l.starts_with("frontend-2 ")),
        "{table}"
    );
    assert!(
        bazaar(&config_path, &["health", "frontend", "--id", "2"])
            .status
            .success()
    );

    // Kill and resume front-end 2 from "another terminal".
    let out = bazaar(&config_path, &["kill", "frontend", "--id", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("frontend-2 killed"),
        "{out:?}"
    );
    let status = status_json(&config_path);
    assert!(
        ups(&status).contains(&("frontend-2".into(), false)),
        "{status}"
    );
    assert!(
        ups(&status).contains(&("frontend".into(), true)),
        "{status}"
    );
    assert!(
        !bazaar(&config_path, &["health", "frontend", "--id", "2"])
            .status
            .success()
    );
    let summary = client(cluster.frontend.port);
    assert_eq!(
        summary["verified"], true,
        "front-end 1 serves alone: {summary}"
    );
    let out = bazaar(&config_path, &["resume", "frontend-2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(ups(&status_json(&config_path)), expected);
    let summary = client(fe2.port);
    assert_eq!(summary["verified"], true, "{summary}");
    let out = bazaar(&config_path, &["kill", "frontend", "--id", "3"]);
    assert!(!out.status.success(), "{out:?}");

    // Ctrl-C stops both and removes the derived config.
    let code = up.interrupt(Duration::from_secs(30));
    assert!(code.success(), "bazaar up exited with {code}");
    assert!(!derived.exists(), "{} is left behind", derived.display());
    let status = status_json(&config_path);
    assert_eq!(
        ups(&status).len(),
        5,
        "without bazaar up, status reads the config: {status}"
    );
}
