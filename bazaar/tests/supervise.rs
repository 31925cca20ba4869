//! Supervision on the real binaries: a service that exits with
//! `common::EXIT_RESTART` (75) is restarted with backoff, by
//! `bazaar::cluster::Cluster` when it supervises and by `bazaar up`, which
//! shows the restarts in `bazaar status`; any other exit (`kill -9`, a bad
//! flag, `bazaar kill`) is recorded and left alone.
//!
//! The exit with 75 comes from the fault point of the catalog's `/apply`
//! (`BAZAAR_FAULT=catalog-before-reply:restart`): after it committed a batch,
//! before it answers, as a storage failure there would.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazaar::cluster::{
    Cluster, RESTART_FIRST_DELAY, ScratchOptions, Service, write_scratch_config,
};
use common::config::Config;
use common::fault::{CATALOG_BEFORE_REPLY, FAULT_ENV};
use common::wait::{try_poll_blocking, wait_until, wait_until_blocking};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The fault that makes the catalog exit with 75 at its `/apply`.
fn exit_restart_at_apply() -> String {
    format!("{CATALOG_BEFORE_REPLY}:restart")
}

/// One trade sent to the front-end on a raw socket, its answer read until
/// the server closes or 20 s pass; the answer does not matter here.
fn send_trade(frontend: &str) -> std::thread::JoinHandle<()> {
    let addr = frontend.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let body = r#"{"name":"AAPL","quantity":1,"type":"buy"}"#;
        let request = format!(
            "POST /orders HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut answer = Vec::new();
        if s.write_all(request.as_bytes()).is_ok() {
            let _ = s.read_to_end(&mut answer);
        }
    })
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("pid fits"))
}

fn print_logs(cluster: &Cluster) {
    for s in cluster.services() {
        let log = std::fs::read_to_string(cluster.log_path(s)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("--- {s} (last lines, newest first)\n{}", tail.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_cluster_restarts_an_exit_75_and_no_other_exit() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_scratch_config(dir.path(), &ScratchOptions::default()).unwrap();
    let mut cluster = Cluster::new(&config, &dir.path().join("logs")).unwrap();
    cluster.set_env(Service::Catalog, FAULT_ENV, Some(&exit_restart_at_apply()));
    cluster.supervise(true).unwrap();
    if let Err(e) = cluster.start_all().await {
        print_logs(&cluster);
        panic!("the cluster did not start: {e:#}");
    }
    // Only the first catalog has the fault: one exit, one restart.
    cluster.set_env(Service::Catalog, FAULT_ENV, None);
    let first = cluster.pid(Service::Catalog).unwrap();
    assert_eq!(cluster.supervised(Service::Catalog).state, "running");

    let trade = send_trade(&cluster.config.frontend_url());
    let c = &cluster;
    wait_until(
        "the catalog to exit with 75 and run again",
        Duration::from_secs(30),
        || async move {
            let sup = c.supervised(Service::Catalog);
            sup.restarts == 1
                && sup.state == "running"
                && c.health(Service::Catalog).await.is_some()
        },
    )
    .await;
    let sup = cluster.supervised(Service::Catalog);
    let exit = sup.last_exit.clone().expect("the exit is recorded");
    assert_eq!(
        (exit.code, exit.signal, exit.restarted),
        (Some(75), None, true),
        "{sup:?}"
    );
    let line = exit.last_line.clone().unwrap_or_default();
    assert!(line.contains(CATALOG_BEFORE_REPLY), "last line {line:?}");
    assert_eq!(sup.exits, 1, "{sup:?}");
    let first_delay = u64::try_from(RESTART_FIRST_DELAY.as_millis()).unwrap();
    assert_eq!(sup.backoff_ms, Some(first_delay), "{sup:?}");
    assert_eq!(sup.next_restart_in_ms, None, "{sup:?}");
    assert_ne!(sup.pid, Some(first), "a new process");
    trade.join().unwrap();

    // The cluster trades again on the restarted catalog.
    let http = reqwest::Client::new();
    let url = format!("{}/orders", cluster.config.frontend_url());
    let http = &http;
    let url = &url;
    wait_until(
        "a trade to succeed after the restart",
        Duration::from_secs(30),
        || async move {
            http.post(url)
                .header("idempotency-key", "after-restart")
                .json(&serde_json::json!({"name": "AMZN", "quantity": 1, "type": "buy"}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;

    // kill -9 from outside: recorded, not restarted.
    let order1 = Service::Order(1);
    kill(pid_of(cluster.pid(order1).unwrap()), Signal::SIGKILL).unwrap();
    let c = &cluster;
    wait_until(
        "the supervisor to see order-1 killed",
        Duration::from_secs(10),
        || async move { c.supervised(order1).exits == 1 },
    )
    .await;
    let sup = cluster.supervised(order1);
    let exit = sup.last_exit.clone().unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.restarted),
        (None, Some(9), false),
        "{sup:?}"
    );
    assert_eq!((sup.restarts, sup.next_restart_in_ms), (0, None), "{sup:?}");
    assert_eq!(sup.state, "exited", "{sup:?}");

    // `bazaar kill` (Cluster::kill) is not even an exit the supervisor sees.
    let order2 = Service::Order(2);
    cluster.kill(order2).unwrap();
    let sup = cluster.supervised(order2);
    assert_eq!(
        (sup.exits, sup.restarts, sup.next_restart_in_ms),
        (0, 0, None),
        "{sup:?}"
    );
    assert_eq!(sup.state, "exited", "{sup:?}");

    // An exit with another code (a usage error: 2) is not restarted either.
    cluster.set_args(order2, &["--no-such-flag"]);
    cluster.start(order2).unwrap();
    let c = &cluster;
    wait_until(
        "the supervisor to see order-2 exit",
        Duration::from_secs(10),
        || async move { c.supervised(order2).exits == 1 },
    )
    .await;
    let sup = cluster.supervised(order2);
    let exit = sup.last_exit.clone().unwrap();
    assert_eq!((exit.code, exit.restarted), (Some(2), false), "{sup:?}");
    assert_eq!((sup.restarts, sup.next_restart_in_ms), (0, None), "{sup:?}");
    assert_eq!(sup.state, "exited", "{sup:?}");
    // Nor is the catalog restarted again: its one exit stays its only one.
    assert_eq!(cluster.supervised(Service::Catalog).restarts, 1);
    cluster.stop_all().await.unwrap();
}

fn bazaar(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bazaar::cluster::bin_dir().unwrap().join("bazaar"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("bazaar runs")
}

fn status_json(config: &std::path::Path) -> serde_json::Value {
    let out = bazaar(config, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The supervisor's entry of `service` in `bazaar status --json`.
fn supervisor_entry(status: &serde_json::Value, service: &str) -> serde_json::Value {
    status["supervisor"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["service"] == service))
        .cloned()
        .unwrap_or_default()
}

/// `bazaar up`, its stdout collected line by line; Ctrl-C on drop.
struct Up {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Up {
        let mut child = Command::new(bazaar::cluster::bin_dir().unwrap().join("bazaar"))
            .arg("--config")
            .arg(config)
            .arg("up")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Up { child, lines }
    }

    fn printed(&self, what: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(what))
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(pid_of(self.child.id()), Signal::SIGINT);
            let _ = self.child.wait();
        }
    }
}

#[test]
fn bazaar_up_restarts_an_exit_75_shows_it_in_status_and_leaves_a_kill_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_scratch_config(dir.path(), &ScratchOptions::default()).unwrap();
    let config = Config::load(&config_path).unwrap();
    // Every child inherits the fault; only the catalog has this point.
    let mut up = Up::start(&config_path, &[(FAULT_ENV, &exit_restart_at_apply())]);
    let started = try_poll_blocking(
        "bazaar up to start the cluster",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            if up.printed("Stop everything with Ctrl-C.") {
                return Some(true);
            }
            up.child.try_wait().ok().flatten().map(|_| false)
        },
    );
    assert!(matches!(started, Ok(true)), "{started:?}: {:?}", up.lines);

    let trade = send_trade(&config.frontend_url());
    let mut last = serde_json::Value::Null;
    let restarted = try_poll_blocking(
        "bazaar status to show the catalog restarted after its exit 75",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            last = status_json(&config_path);
            let sup = supervisor_entry(&last, "catalog");
            (sup["restarts"].as_u64() >= Some(1)
                && sup["last_exit"]["code"] == 75
                && sup["state"] == "running")
                .then_some(())
        },
    );
    if let Err(e) = restarted {
        let logs = dir.path().join("data/logs/catalog.log");
        let log = std::fs::read_to_string(logs).unwrap_or_default();
        panic!(
            "{e}\nlast status: {last:#}\nbazaar up printed: {:#?}\ncatalog log:\n{log}",
            up.lines.lock().unwrap()
        );
    }
    trade.join().unwrap();
    let status = status_json(&config_path);
    let sup = supervisor_entry(&status, "catalog");
    let line = sup["last_exit"]["last_line"].as_str().unwrap_or_default();
    assert!(line.contains(CATALOG_BEFORE_REPLY), "{status}");
    assert_eq!(sup["last_exit"]["restarted"], true, "{status}");
    assert!(sup["backoff_ms"].as_u64() >= Some(500), "{status}");
    // `bazaar up` told its terminal (it looks every 200 ms).
    for line in ["catalog exited with exit code 75", "catalog restarted (pid"] {
        wait_until_blocking(line, Duration::from_secs(10), || up.printed(line));
    }
    // The table has the count and the exit.
    let out = bazaar(&config_path, &["status"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.lines().next().unwrap().ends_with("RESTARTS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("catalog exited ") && l.contains(" ago with exit code 75: ")),
        "{table}"
    );

    // kill -9 of a replica from outside: reported, not restarted.
    let order1 = supervisor_entry(&status, "order-1");
    let pid = u32::try_from(order1["pid"].as_u64().unwrap()).unwrap();
    kill(pid_of(pid), Signal::SIGKILL).unwrap();
    let order1 = try_poll_blocking(
        "bazaar status to show order-1 killed",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let sup = supervisor_entry(&status_json(&config_path), "order-1");
            (sup["exits"] == 1).then_some(sup)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(order1["last_exit"]["signal"], 9, "{order1}");
    assert_eq!(order1["last_exit"]["restarted"], false, "{order1}");
    assert_eq!(order1["restarts"], 0, "{order1}");
    assert_eq!(
        order1["next_restart_in_ms"],
        serde_json::Value::Null,
        "{order1}"
    );
    assert_eq!(order1["state"], "exited", "{order1}");
    wait_until_blocking(
        "bazaar up to report the kill",
        Duration::from_secs(10),
        || up.printed("order-1 exited with signal 9"),
    );

    // Ctrl-C still stops everything cleanly.
    kill(pid_of(up.child.id()), Signal::SIGINT).unwrap();
    let code = try_poll_blocking(
        "bazaar up to stop",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || up.child.try_wait().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(code.success(), "bazaar up exited with {code}");
}
