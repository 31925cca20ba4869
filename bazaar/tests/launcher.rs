//! `bazaar up` end to end: the launcher starts the cluster, the client runs
//! against it and verifies, `bazaar kill/resume/status` work from "another
//! terminal", and Ctrl-C stops everything.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bazaar::cluster::{ScratchOptions, bin_dir, write_scratch_config};
use common::config::Config;
use common::wait::wait_until_blocking;
use support::{Up, bazaar};

/// `GET /health` over a plain socket: true on a 200.
fn healthy(url: &str) -> bool {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    s.write_all(request.as_bytes()).is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200")
}

#[test]
fn bazaar_up_runs_a_cluster_the_client_can_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_scratch_config(dir.path(), &ScratchOptions::default()).unwrap();
    let config = Config::load(&config_path).unwrap();
    let frontend = config.frontend_url();

    let mut up = Up::start(&config_path, &[], Stdio::piped());
    wait_until_blocking(
        "the front-end of bazaar up",
        Duration::from_secs(30),
        || healthy(&frontend),
    );

    let port = config.frontend.port.to_string();
    let client = |extra: &[&str]| {
        let out = Command::new(bin_dir().unwrap().join("client"))
            .args(["--host", "127.0.0.1", "--port", &port, "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let summary = client(&[
        "--n_request",
        "40",
        "--prob",
        "0.5",
        "--clients",
        "3",
        "--seed",
        "5",
    ]);
    assert_eq!(summary["lookup"]["count"], 120);
    assert_eq!(summary["lookup"]["errors"], 0);
    assert_eq!(summary["trade"]["errors"], 0);
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["mismatches"], 0);
    let trades = summary["trade"]["count"].as_u64().unwrap();
    assert!(trades > 20, "{summary}");
    assert_eq!(summary["query"]["count"].as_u64(), Some(trades));

    // From "another terminal": kill the leader, trade, bring it back.
    let out = bazaar(&config_path, &["kill", "order", "--id", "3"]);
    assert!(out.status.success(), "{out:?}");
    let summary = client(&["--n-request", "20", "--prob", "1", "--seed", "6"]);
    assert_eq!(summary["verified"], true, "{summary}");
    assert_eq!(summary["trade"]["errors"], 0, "{summary}");
    let out = bazaar(&config_path, &["resume", "order-3"]);
    assert!(out.status.success(), "{out:?}");

    let out = bazaar(&config_path, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 5, "{status}");
    assert!(services.iter().all(|s| s["up"] == true), "{status}");
    let highest: Vec<_> = services
        .iter()
        .filter(|s| s["service"].as_str().unwrap().starts_with("order-"))
        .map(|s| s["health"]["highest"].clone())
        .collect();
    assert_eq!(highest.len(), 3);
    assert!(highest.iter().all(|h| *h == highest[0]), "{status}");
    assert_eq!(status["frontend"]["leader"]["id"], 2, "{status}");
    assert_eq!(status["paused"], serde_json::json!([]), "{status}");

    // A frozen follower is shown as paused, not merely down, and comes back.
    let out = bazaar(&config_path, &["pause", "order", "--id", "1"]);
    assert!(out.status.success(), "{out:?}");
    let out = bazaar(&config_path, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["paused"], serde_json::json!(["order-1"]), "{status}");
    let out = bazaar(&config_path, &["status"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("order-1") && l.contains(" paused ")),
        "{table}"
    );
    let out = bazaar(&config_path, &["continue", "order", "--id", "1"]);
    assert!(out.status.success(), "{out:?}");
    wait_until_blocking("order-1 to answer again", Duration::from_secs(20), || {
        let out = bazaar(&config_path, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["services"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["up"] == true))
            && status["paused"] == serde_json::json!([])
    });

    // Ctrl-C stops every service and the launcher exits 0.
    let code = up.interrupt(Duration::from_secs(20));
    assert!(code.success(), "bazaar up exited with {code}");
    for url in std::iter::once(config.catalog_url())
        .chain(config.orders.iter().map(|o| o.url()))
        .chain(std::iter::once(frontend.clone()))
    {
        assert!(!healthy(&url), "{url} still answers after Ctrl-C");
    }
}

/// Ctrl-C while the cluster is still starting (the catalog up, the
/// replicas in their start-up catch-up) stops what has started, and
/// `bazaar up` exits by itself instead of dying of the signal.
#[test]
fn ctrl_c_during_the_start_stops_what_has_started() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_scratch_config(dir.path(), &ScratchOptions::default()).unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut up = Up::start(&config_path, &["--frontends", "2"], Stdio::null());
    wait_until_blocking("the catalog of bazaar up", Duration::from_secs(30), || {
        healthy(&config.catalog_url())
    });
    let code = up.interrupt(Duration::from_secs(30));
    assert!(
        code.code().is_some(),
        "bazaar up did not exit by itself: {code}"
    );
    for url in std::iter::once(config.catalog_url())
        .chain(config.orders.iter().map(|o| o.url()))
        .chain(std::iter::once(config.frontend_url()))
    {
        assert!(!healthy(&url), "{url} still answers after Ctrl-C");
    }
    let run = dir.path().join("data/run");
    let left: Vec<_> = std::fs::read_dir(&run)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{} holds {left:?}", run.display());
}
