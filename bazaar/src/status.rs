//! `bazaar status`: asks every service of a config for its health and shows
//! who is up, who leads, and how far each replica is. Works for any cluster
//! of the config, however it was started.

use std::time::Duration;

use common::config::Config;
use common::types::{ClusterStatus, Health, ServiceStatus};

/// A service slower than this to answer is shown as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

pub async fn collect(config: &Config) -> Vec<ServiceStatus> {
    let client = common::http::internal_client(PROBE_TIMEOUT, None);
    let mut targets = vec![("catalog".to_string(), config.catalog_url())];
    targets.extend(
        config
            .orders
            .iter()
            .map(|o| (format!("order-{}", o.id), o.url())),
    );
    targets.push(("frontend".into(), config.frontend_url()));
    let probes = targets.into_iter().map(|(service, url)| {
        let client = client.clone();
        async move {
            let health = async {
                client
                    .get(format!("{url}/health"))
                    .send()
                    .await
                    .ok()?
                    .json::<Health>()
                    .await
                    .ok()
            }
            .await;
            ServiceStatus {
                service,
                url,
                up: health.is_some(),
                health,
            }
        }
    });
    futures_util::future::join_all(probes).await
}

/// Services of a running `bazaar up` that are frozen (SIGSTOP): a paused
/// process answers nothing, so the probes alone would call it down. Empty
/// when no `bazaar up` runs for this config.
pub async fn paused(run_dir: &std::path::Path, rows: &[ServiceStatus]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| !r.up) {
        let Ok(service) = r.service.parse::<crate::cluster::Service>() else {
            continue;
        };
        let state = crate::control::send(run_dir, crate::control::Action::State, service).await;
        if state.is_ok_and(|s| s == "paused") {
            out.push(r.service.clone());
        }
    }
    out
}

pub fn print_table(rows: &[ServiceStatus], paused: &[String]) {
    println!(
        "{:<10} {:<24} {:<6} {:<12} {:>6} {:>8}",
        "SERVICE", "ADDRESS", "STATE", "ROLE", "EPOCH", "HIGHEST"
    );
    for r in rows {
        let (role, epoch, highest) = match &r.health {
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
            Some(h) if h.service == "frontend" => (
                h.id.map_or("no leader".into(), |id| format!("leader={id}")),
                h.epoch.to_string(),
                "-".into(),
            ),
            Some(h) => (
                h.role.clone(),
                h.epoch.to_string(),
                h.highest.map_or("none".into(), |n| n.to_string()),
            ),
        };
        let state = if r.up {
            "up"
        } else if paused.contains(&r.service) {
            "paused"
        } else {
            "down"
        };
        println!(
            "{:<10} {:<24} {:<6} {:<12} {:>6} {:>8}",
            r.service, r.url, state, role, epoch, highest
        );
    }
}

/// The front-end's view (`GET /status`): leader history and cache contents.
pub async fn frontend_view(config: &Config) -> Option<ClusterStatus> {
    let client = common::http::internal_client(PROBE_TIMEOUT, None);
    client
        .get(format!("{}/status", config.frontend_url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

pub fn print_frontend_view(view: &ClusterStatus) {
    let c = &view.cache;
    println!();
    println!(
        "cache ({}/{} entries, most recent first): {}",
        c.entries.len(),
        c.capacity,
        if c.entries.is_empty() {
            "-".to_string()
        } else {
            c.entries.join(" ")
        }
    );
    println!(
        "cache counters: {} hits, {} misses, {} evictions, {} invalidations",
        c.hits, c.misses, c.evictions, c.invalidations
    );
    let changes: Vec<String> = view
        .leader_changes
        .iter()
        .rev()
        .take(5)
        .map(|ch| match ch.id {
            Some(id) => format!("order-{id} (epoch {})", ch.epoch),
            None => "none".into(),
        })
        .collect();
    println!(
        "leader selections: {}; latest leaders, newest first: {}",
        view.selections,
        changes.join(", ")
    );
}
