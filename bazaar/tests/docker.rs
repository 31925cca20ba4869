//! The compose stack of issue 8: five containers on a private network.
//!
//! Builds the image from the binaries this test run was built with
//! (`docker/build-image.sh`, nothing pulled), brings `compose.yaml` up under a
//! unique project name with the front-end published on a free host port,
//! and runs the real `client` from the host. Then it `docker kill`s the
//! leader container under load and restarts it, cuts the new leader off the
//! network with `docker network disconnect` and reconnects it after another
//! container took its address, and checks the cluster's guarantees (README,
//! "Testing") from the dumps: three identical, contiguous order logs holding
//! every acknowledged trade (and nothing beyond the trades a client saw
//! fail), and catalog conservation. `docker compose down -v` runs whatever
//! happens.
//!
//! Skipped, with the reason on stderr, when no Docker engine or Compose
//! answers, when the service binaries are not built, or when
//! `BAZAAR_SKIP_DOCKER=1`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::types::{Health, Order, StockRow};
use common::wait::poll;
use serde_json::Value;

const BINARIES: [&str; 5] = ["catalog", "order", "frontend", "client", "bazaar"];
const REPLICAS: [u32; 3] = [1, 2, 3];
const CLIENTS: &str = "4";

/// Writes to the real stderr, past the test harness's capture, so a skip
/// or the timing summary shows in a plain `cargo test`.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "docker test: {line}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bazaar crate lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null()).output()
}

/// Runs `cmd` and returns its stdout; panics with its stderr on failure.
fn must(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd).unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> String {
    must(Command::new("docker").args(args))
}

/// `docker compose` (the plugin) or the standalone `docker-compose`.
fn find_compose() -> Option<Vec<String>> {
    let answers = |program: &str, args: &[&str]| {
        run(Command::new(program).args(args)).is_ok_and(|o| o.status.success())
    };
    if answers("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if answers("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

fn skip_reason(bin_dir: &Path) -> Option<String> {
    if std::env::var("BAZAAR_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        return Some("BAZAAR_SKIP_DOCKER=1".into());
    }
    match run(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])) {
        Err(e) => return Some(format!("no docker command ({e})")),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            return Some(format!(
                "the Docker engine does not answer: {}",
                err.lines().next().unwrap_or("").trim()
            ));
        }
        Ok(_) => {}
    }
    if find_compose().is_none() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    for b in BINARIES {
        if !bin_dir.join(b).is_file() {
            return Some(format!(
                "{} is missing; run `cargo build --workspace --bins` first (`make test` does)",
                bin_dir.join(b).display()
            ));
        }
    }
    None
}

/// One compose project: `down -v`, the image and any extra container are
/// removed when it drops, also when the test panics.
struct Stack {
    compose: Vec<String>,
    root: PathBuf,
    project: String,
    image: String,
    env: Vec<(String, String)>,
    extra_containers: Vec<String>,
    passed: bool,
}

impl Stack {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-f")
            .arg(self.root.join("compose.yaml"))
            .arg("--project-directory")
            .arg(&self.root)
            .args(["-p", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn compose(&self, args: &[&str]) -> String {
        must(&mut self.command(args))
    }

    fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]).trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.passed
            && let Ok(o) = run(&mut self.command(&["logs", "--no-color", "--tail", "60"]))
        {
            let _ = std::io::stderr().write_all(&o.stdout);
        }
        if !self.passed || std::env::var_os("BAZAAR_KEEP_LOGS").is_some() {
            // Every line of every container, kept for whoever reads the
            // failure, or always with BAZAAR_KEEP_LOGS set (the stack
            // itself is removed below).
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", self.project));
            if let Ok(o) = run(&mut self.command(&["logs", "--no-color", "--timestamps"]))
                && std::fs::write(&kept, &o.stdout).is_ok()
            {
                report(&format!("the stack's full logs: {}", kept.display()));
            }
        }
        for c in &self.extra_containers {
            let _ = run(Command::new("docker").args(["rm", "-f", c]));
        }
        match run(&mut self.command(&["down", "-v", "--remove-orphans", "--timeout", "5"])) {
            Ok(o) if o.status.success() => {}
            Ok(o) => report(&format!(
                "`down -v` of {} failed: {}",
                self.project,
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => report(&format!("`down -v` of {} failed: {e}", self.project)),
        }
        let _ = run(Command::new("docker").args(["image", "rm", "-f", &self.image]));
    }
}

struct Frontend {
    http: reqwest::Client,
    base: String,
}

impl Frontend {
    async fn health(&self) -> Option<Health> {
        let r = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    async fn leader(&self) -> Option<u32> {
        self.health().await.and_then(|h| h.id)
    }

    async fn wait_leader(&self, id: u32, timeout: Duration) -> Duration {
        let started = Instant::now();
        poll(
            &format!("the front-end to pick order {id} as leader"),
            timeout,
            Duration::from_millis(50),
            || async { (self.leader().await == Some(id)).then_some(()) },
        )
        .await;
        started.elapsed()
    }

    /// True once the order with this number exists (the load has got that far).
    async fn has_order(&self, number: u64) -> bool {
        self.http
            .get(format!("{}/orders/{number}", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// What the test needs of the client's `--json` summary.
#[derive(Debug)]
struct ClientRun {
    acknowledged: u64,
    trade_errors: u64,
    lookup_errors: u64,
    throughput_rps: f64,
}

fn client_command(bin_dir: &Path, port: u16, n_request: u64, seed: u64) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin_dir.join("client"));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n-request", &n_request.to_string(), "--prob", "0.5"])
        .args(["--clients", CLIENTS, "--seed", &seed.to_string(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn client_result(what: &str, out: &std::process::Output) -> ClientRun {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: the client failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: the client printed no JSON ({e}): {stdout}"));
    assert_eq!(v["verified"], Value::Bool(true), "{what}: {v}");
    assert_eq!(v["mismatches"].as_u64(), Some(0), "{what}: {v}");
    ClientRun {
        acknowledged: v["trades_acknowledged"]
            .as_u64()
            .expect("trades_acknowledged"),
        trade_errors: v["trade"]["errors"].as_u64().unwrap_or(0),
        lookup_errors: v["lookup"]["errors"].as_u64().unwrap_or(0),
        throughput_rps: v["throughput_rps"].as_f64().unwrap_or(0.0),
    }
}

async fn run_client(bin_dir: &Path, port: u16, n_request: u64, seed: u64, what: &str) -> ClientRun {
    let out = client_command(bin_dir, port, n_request, seed)
        .output()
        .await
        .expect("the client starts");
    client_result(what, &out)
}

/// Each replica's highest order number, as `bazaar status` inside the
/// network sees it (None when a replica does not answer).
fn replica_highest(status_container: &str) -> Option<BTreeMap<u32, Option<u64>>> {
    let out =
        run(Command::new("docker").args(["exec", status_container, "bazaar", "status", "--json"]))
            .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut highest = BTreeMap::new();
    for s in v["services"].as_array()? {
        let Some(id) = s["service"]
            .as_str()
            .and_then(|n| n.strip_prefix("order-"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if s["up"] != Value::Bool(true) || s["health"]["role"] == "catching-up" {
            return None;
        }
        highest.insert(id, s["health"]["highest"].as_u64());
    }
    Some(highest)
}

fn order_dump(container: &str, id: u32) -> Vec<Order> {
    docker(&["exec", container, "order", "dump", "--id", &id.to_string()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("order dump line {l:?}: {e}")))
        .collect()
}

fn catalog_dump(container: &str) -> Vec<StockRow> {
    docker(&["exec", container, "catalog", "dump"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("catalog dump line {l:?}: {e}")))
        .collect()
}

/// Waits until Docker reports the container's health check as healthy.
async fn wait_healthy(container: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    poll(
        &format!("container {container} to be healthy"),
        timeout,
        Duration::from_millis(100),
        || async {
            let out = run(Command::new("docker").args([
                "inspect",
                "-f",
                "{{.State.Health.Status}}",
                container,
            ]))
            .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "healthy").then_some(())
        },
    )
    .await;
    started.elapsed()
}

fn ip_of(container: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        container,
    ])
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_survives_container_kill_and_network_cut() {
    let bin_dir = bazaar::cluster::bin_dir().expect("binary directory");
    if let Some(reason) = skip_reason(&bin_dir) {
        report(&format!("SKIPPED: {reason}"));
        return;
    }
    let started = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |what: &str, timings: &mut Vec<(String, Duration)>| {
        timings.push((what.to_string(), lap.elapsed()));
        lap = Instant::now();
    };

    let root = repo_root();
    let unique = format!("{}{:x}", std::process::id(), rand::random::<u32>());
    let project = format!("bazaartest{unique}");
    let image = format!("stock-bazaar-test:{unique}");
    let mut stack = Stack {
        compose: find_compose().expect("compose was found above"),
        root: root.clone(),
        project: project.clone(),
        image: image.clone(),
        env: vec![
            ("BAZAAR_IMAGE".into(), image.clone()),
            // Docker picks a free host port for the front-end.
            ("FRONTEND_PUBLISH_ADDR".into(), "127.0.0.1".into()),
            ("FRONTEND_PUBLISH_PORT".into(), String::new()),
            ("FRONTEND_PORT".into(), "8080".into()),
            (
                "BAZAAR_TOKEN".into(),
                format!("test-{:032x}", rand::random::<u128>()),
            ),
            ("BAZAAR_LOG_FORMAT".into(), "json".into()),
            ("RESTART_POLICY".into(), "no".into()),
        ],
        extra_containers: Vec::new(),
        passed: false,
    };

    // 1. The image, from the binaries of this build, nothing pulled.
    must(
        Command::new(root.join("docker/build-image.sh"))
            .env("BAZAAR_BIN_DIR", &bin_dir)
            .env("BAZAAR_IMAGE", &image)
            .env("BAZAAR_STRIP", "1"),
    );
    mark("build the image", &mut timings);

    // 2. Up: depends_on waits for the healthy catalog and replicas.
    stack.compose(&["up", "-d"]);
    let published = stack.compose(&["port", "frontend", "8080"]);
    let port: u16 = published
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no published front-end port in {published:?}"));
    let fe = Frontend {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client"),
        base: format!("http://127.0.0.1:{port}"),
    };
    fe.wait_leader(3, Duration::from_secs(60)).await;
    mark("compose up until order 3 leads", &mut timings);
    let catalog = stack.container("catalog");
    let orders: BTreeMap<u32, String> = REPLICAS
        .iter()
        .map(|&id| (id, stack.container(&format!("order{id}"))))
        .collect();
    let network = docker(&[
        "inspect",
        "-f",
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
        &orders[&1],
    ])
    .trim()
    .to_string();
    let initial = catalog_dump(&catalog);
    assert!(initial.len() >= 10, "the catalog holds the shipped stocks");
    let mut acknowledged = 0u64;

    // 3. Plain load from the host.
    let a = run_client(&bin_dir, port, 100, 1, "first load").await;
    acknowledged += a.acknowledged;
    mark("client load 1", &mut timings);

    // 4. Kill the leader container under load; the front-end fails over.
    let mut load = client_command(&bin_dir, port, 400, 2)
        .spawn()
        .expect("the client starts");
    let target = acknowledged + 40;
    poll(
        "the second load to get going",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { fe.has_order(target).await.then_some(()) },
    )
    .await;
    docker(&["kill", &orders[&3]]);
    let load_running = load.try_wait().expect("client status").is_none();
    let failover = fe.wait_leader(2, Duration::from_secs(30)).await;
    let b = client_result(
        "load across the leader kill",
        &load.wait_with_output().await.expect("client output"),
    );
    acknowledged += b.acknowledged;
    mark("client load 2 with docker kill of order3", &mut timings);

    // 5. Restart it: it catches up before it serves (its health check
    //    answers only then) and stays a follower: order 2 keeps leading.
    docker(&["start", &orders[&3]]);
    let back = wait_healthy(&orders[&3], Duration::from_secs(60)).await;
    let c = run_client(&bin_dir, port, 100, 3, "load after the restart").await;
    acknowledged += c.acknowledged;
    mark("docker start order3, client load 3", &mut timings);

    // 6. Cut the leader off the network under load; the front-end fails over
    //    to order 3. Another container takes the cut replica's address, so
    //    it comes back under a new one: it must still be reachable by name.
    let cut = fe.leader().await.expect("a leader");
    assert_ne!(cut, 3, "order 3 came back as a follower");
    let load = client_command(&bin_dir, port, 300, 4)
        .spawn()
        .expect("the client starts");
    let target = acknowledged + 40;
    poll(
        "the fourth load to get going",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { fe.has_order(target).await.then_some(()) },
    )
    .await;
    let old_ip = ip_of(&orders[&cut]);
    docker(&["network", "disconnect", &network, &orders[&cut]]);
    let cut_failover = fe.wait_leader(3, Duration::from_secs(30)).await;
    let filler = format!("{project}-filler");
    stack.extra_containers.push(filler.clone());
    docker(&[
        "run",
        "-d",
        "-i",
        "--name",
        &filler,
        "--network",
        &network,
        &image,
        // The image has no shell: a client retrying a closed port for an
        // hour is a process that just sits on the address.
        "client",
        "--port",
        "9",
        "--n-request",
        "1",
        "--retry-for-ms",
        "3600000",
    ]);
    let alias = format!("order{cut}");
    docker(&[
        "network",
        "connect",
        "--alias",
        &alias,
        &network,
        &orders[&cut],
    ]);
    let new_ip = ip_of(&orders[&cut]);
    let d = client_result(
        "load across the network cut",
        &load.wait_with_output().await.expect("client output"),
    );
    acknowledged += d.acknowledged;
    let e = run_client(&bin_dir, port, 100, 5, "load after the reconnect").await;
    acknowledged += e.acknowledged;
    mark(
        "network disconnect/connect of the leader, loads 4 and 5",
        &mut timings,
    );

    // 7. Every replica holds exactly the acknowledged trades, identically,
    //    and the catalog agrees with the log.
    // A trade whose outcome stayed unknown to a client (counted among its
    // errors) may or may not have been ordered; every acknowledged one was.
    let trade_errors =
        a.trade_errors + b.trade_errors + c.trade_errors + d.trade_errors + e.trade_errors;
    poll(
        "the three replicas to agree on every acknowledged order",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let h = replica_highest(&orders[&1])?;
            let first = *h.values().next()?;
            let held = first.map_or(0, |n| n + 1);
            (h.len() == REPLICAS.len() && h.values().all(|&x| x == first) && held >= acknowledged)
                .then_some(())
        },
    )
    .await;
    let dumps: BTreeMap<u32, Vec<Order>> = REPLICAS
        .iter()
        .map(|&id| (id, order_dump(&orders[&id], id)))
        .collect();
    for id in [2, 3] {
        assert!(
            dumps[&id] == dumps[&1],
            "order{id}'s dump differs from order1's ({} vs {} orders)",
            dumps[&id].len(),
            dumps[&1].len()
        );
    }
    let log = &dumps[&1];
    let held = log.len() as u64;
    assert!(
        (acknowledged..=acknowledged + trade_errors).contains(&held),
        "the log holds {held} orders for {acknowledged} acknowledged trades \
         and {trade_errors} failed ones"
    );
    support::assert_contiguous(log);
    let stocks = catalog_dump(&catalog);
    let mut expected: BTreeMap<&str, (i128, u64)> = initial
        .iter()
        .map(|s| (s.name.as_str(), (i128::from(s.quantity), s.volume)))
        .collect();
    for o in log {
        let entry = expected
            .get_mut(o.name.as_str())
            .unwrap_or_else(|| panic!("order {} names an unknown stock {}", o.number, o.name));
        let q = i128::from(o.quantity);
        entry.0 += if o.kind == common::types::TradeKind::Buy {
            -q
        } else {
            q
        };
        entry.1 += o.quantity;
    }
    for s in &stocks {
        let (quantity, volume) = expected[s.name.as_str()];
        assert_eq!(
            i128::from(s.quantity),
            quantity,
            "catalog quantity of {} = initial − Σbuy + Σsell",
            s.name
        );
        assert_eq!(s.volume, volume, "traded volume of {}", s.name);
    }
    mark("convergence and dumps", &mut timings);
    stack.passed = true;
    drop(stack);
    mark("compose down -v", &mut timings);

    report(&format!(
        "{acknowledged} trades acknowledged in 5 client runs of {CLIENTS} sessions \
         (errors: trade {}, lookup {}; {:.0}/{:.0}/{:.0}/{:.0}/{:.0} req/s); \
         leader kill {} under load, failover seen after {:.2} s, order3 healthy {:.2} s after docker start; \
         network cut of order{cut}: failover {:.2} s, its address {old_ip} -> {new_ip}; \
         3 identical dumps of {} orders, catalog conserved",
        trade_errors,
        a.lookup_errors + b.lookup_errors + c.lookup_errors + d.lookup_errors + e.lookup_errors,
        a.throughput_rps,
        b.throughput_rps,
        c.throughput_rps,
        d.throughput_rps,
        e.throughput_rps,
        if load_running {
            "happened"
        } else {
            "came after the load ended"
        },
        failover.as_secs_f64(),
        back.as_secs_f64(),
        cut_failover.as_secs_f64(),
        log.len(),
    ));
    let summary: Vec<String> = timings
        .iter()
        .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
        .collect();
    report(&format!(
        "{}; total {:.1} s",
        summary.join(", "),
        started.elapsed().as_secs_f64()
    ));
}
