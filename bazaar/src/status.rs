//! `bazaar status`: asks every service of a config for its health and shows
//! who is up, who leads, and how far each replica is. Works for any cluster
//! of the config, however it was started; when `bazaar up` runs it, also who
//! is frozen and what its supervisor restarted.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::client::ServiceClient;
use common::config::Config;
use common::types::{ClusterStatus, ServiceStatus};

use crate::cluster::{LastExit, Service, Supervised};
use crate::control::{self, Action};

/// A service slower than this to answer is shown as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Every service of `config`: the catalog, each replica, each front-end.
pub async fn collect(config: &Config) -> Vec<ServiceStatus> {
    let client = ServiceClient::new(PROBE_TIMEOUT, None);
    let mut targets = vec![("catalog".to_string(), config.catalog_url())];
    targets.extend(
        config
            .orders
            .iter()
            .map(|o| (Service::Order(o.id).to_string(), o.url())),
    );
    targets.extend(
        config
            .frontends()
            .iter()
            .map(|f| (Service::Frontend(f.id).to_string(), f.url())),
    );
    let probes = targets.into_iter().map(|(service, url)| {
        let client = client.clone();
        async move {
            let health = client.health(&url).await.ok();
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

/// What a running `bazaar up` adds to the probes.
#[derive(Debug, Clone, Default)]
pub struct UpView {
    /// Services frozen by SIGSTOP: a paused process answers nothing, so the
    /// probes alone would call it down.
    pub paused: Vec<String>,
    /// What its supervisor saw and did, per service.
    pub supervised: Vec<Supervised>,
}

/// Asks the `bazaar up` of this run directory about every service; empty
/// when none runs.
pub async fn up_view(run_dir: &Path, rows: &[ServiceStatus]) -> UpView {
    let mut view = UpView::default();
    for r in rows {
        let Ok(service) = r.service.parse::<Service>() else {
            continue;
        };
        let Ok(answer) = control::send(run_dir, Action::Supervision, service).await else {
            continue;
        };
        let Ok(sup) = serde_json::from_str::<Supervised>(&answer) else {
            continue;
        };
        if !r.up && sup.state == "paused" {
            view.paused.push(r.service.clone());
        }
        view.supervised.push(sup);
    }
    view
}

pub fn print_table(rows: &[ServiceStatus], up: &UpView) {
    println!(
        "{:<10} {:<24} {:<10} {:<12} {:>6} {:>8} {:<7} {:>8}",
        "SERVICE", "ADDRESS", "STATE", "ROLE", "EPOCH", "HIGHEST", "STORAGE", "RESTARTS"
    );
    for r in rows {
        let (role, epoch, highest) = match &r.health {
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
            Some(h) if is_frontend(&h.service) => (
                h.id.map_or("no leader".into(), |id| format!("leader={id}")),
                h.epoch.to_string(),
                "-".into(),
            ),
            Some(h) => (
                h.role.to_string(),
                h.epoch.to_string(),
                h.highest.map_or("none".into(), |n| n.to_string()),
            ),
        };
        let sup = up.supervised.iter().find(|s| s.service == r.service);
        let state = match &r.health {
            Some(h) if !h.ready => "unready",
            Some(_) => "up",
            None if up.paused.contains(&r.service) => "paused",
            None if sup.is_some_and(|s| s.state == "restarting") => "restarting",
            None => "down",
        };
        let storage = r.health.as_ref().map_or("-", |h| h.storage.as_str());
        let restarts = sup.map_or("-".into(), |s| s.restarts.to_string());
        println!(
            "{:<10} {:<24} {:<10} {:<12} {:>6} {:>8} {:<7} {:>8}",
            r.service, r.url, state, role, epoch, highest, storage, restarts
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let h = r.health.as_ref().filter(|h| !h.ready)?;
            Some(format!(
                "{} is not ready: {}",
                r.service,
                h.reason.as_deref().unwrap_or("no reason given")
            ))
        })
        .chain(up.supervised.iter().filter_map(|s| {
            let exit = s.last_exit.as_ref()?;
            Some(exit_line(s, exit, &format!(" {} ago", ago(exit))))
        }))
        .collect();
    if !notes.is_empty() {
        println!();
        notes.iter().for_each(|n| println!("{n}"));
    }
}

/// `order-2 exited<when> with exit code 75: <its last line>; restarting in
/// 500ms` (`when`: empty, or ` 2.5 s ago`).
pub fn exit_line(sup: &Supervised, exit: &LastExit, when: &str) -> String {
    let s = &sup.service;
    let said = exit
        .last_line
        .as_deref()
        .map_or(String::new(), |l| format!(": {l}"));
    let next = match sup.next_restart_in_ms {
        Some(ms) => format!("; restarting in {:?}", Duration::from_millis(ms)),
        None if exit.restarted => "; restarted".into(),
        None if sup.state == "running" || sup.state == "paused" => "; started again since".into(),
        None => format!("; not restarted (bring it back with `bazaar resume {s}`)"),
    };
    format!("{s} exited{when} with {}{said}{next}", exit.how())
}

/// How long ago an exit was, to the tenth of a second.
fn ago(exit: &LastExit) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let ms = now.saturating_sub(exit.at_ms);
    format!("{}.{} s", ms / 1000, ms % 1000 / 100)
}

/// `frontend` or `frontend-N`.
fn is_frontend(service: &str) -> bool {
    matches!(service.parse(), Ok(Service::Frontend(_)))
}

/// A front-end's view (`GET /status`): leader history and cache contents,
/// from the first front-end of the config that answers.
pub async fn frontend_view(config: &Config) -> Option<ClusterStatus> {
    let client = ServiceClient::new(PROBE_TIMEOUT, None);
    for f in config.frontends() {
        if let Ok(view) = client.get(format!("{}/status", f.url())).await {
            return Some(view);
        }
    }
    None
}

pub fn print_frontend_view(view: &ClusterStatus) {
    let c = &view.cache;
    let who = view
        .services
        .iter()
        .find(|s| s.url.is_empty())
        .map_or("the front-end", |s| s.service.as_str());
    println!();
    println!(
        "{who}'s cache ({}/{} entries, most recent first): {}",
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
