//! The faults `bazaar chaos` draws, how each is aimed (at the leader of the
//! moment, a follower, ...), injected and healed.
//!
//! Process faults: `kill -9` of the leader, a follower, two replicas, the
//! catalog or a front-end (any one of them), and SIGSTOP of the leader.
//! Gray faults, where a process keeps running but cannot do its job: a link
//! cut (its proxy black-holes it, see [`super::links`]) between the leader
//! and the catalog, between the leader and a follower (both directions),
//! between a front-end and the leader, and, with several front-ends,
//! between the catalog and a front-end (its invalidations and cache lease);
//! and a full disk (see [`super::disks`]) of the leader, a follower or the
//! catalog.

use std::sync::Arc;
use std::time::Duration;

use common::types::{Role, StorageState};
use common::wait::try_poll;
use rand::Rng;
use rand::rngs::StdRng;

use super::disks::Disks;
use super::links::{Link, Links};
use crate::cluster::Service;
use crate::proxy::LinkMode;
use crate::scratch::Scratch;

/// How long a service gets to be back to normal (answering, ready, storage
/// ok, caught up) once its gray fault is healed: a restart by the
/// supervisor after its disk was freed (0.5 s of backoff, start-up,
/// catch-up) takes a few seconds; this is far more, so only a service that
/// does not heal by itself misses it.
pub const HEAL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillLeader,
    KillFollower,
    KillTwoReplicas,
    PauseLeader,
    KillCatalog,
    KillFrontend,
    CutLeaderCatalog,
    CutLeaderFollower,
    CutFrontendLeader,
    CutCatalogFrontend,
    FillLeaderDisk,
    FillFollowerDisk,
    FillCatalogDisk,
}

impl Fault {
    pub const PROCESS: [Fault; 6] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillTwoReplicas,
        Fault::PauseLeader,
        Fault::KillCatalog,
        Fault::KillFrontend,
    ];
    /// Gray faults that need nothing but the proxies.
    pub const LINKS: [Fault; 3] = [
        Fault::CutLeaderCatalog,
        Fault::CutLeaderFollower,
        Fault::CutFrontendLeader,
    ];
    /// Gray faults that need several front-ends: with one, the catalog's
    /// notices are best effort and the front-end drops what its own trades
    /// change, so a cut between them changes nothing a client can see.
    pub const FRONTEND_LINKS: [Fault; 1] = [Fault::CutCatalogFrontend];
    /// Gray faults that need the small disks (root).
    pub const DISKS: [Fault; 3] = [
        Fault::FillLeaderDisk,
        Fault::FillFollowerDisk,
        Fault::FillCatalogDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillTwoReplicas => "kill-two-replicas",
            Fault::PauseLeader => "pause-leader",
            Fault::KillCatalog => "kill-catalog",
            Fault::KillFrontend => "kill-frontend",
            Fault::CutLeaderCatalog => "cut-leader-catalog",
            Fault::CutLeaderFollower => "cut-leader-follower",
            Fault::CutFrontendLeader => "cut-frontend-leader",
            Fault::CutCatalogFrontend => "cut-catalog-frontend",
            Fault::FillLeaderDisk => "fill-leader-disk",
            Fault::FillFollowerDisk => "fill-follower-disk",
            Fault::FillCatalogDisk => "fill-catalog-disk",
        }
    }

    /// Whether the fault takes the leader out of service: the trades
    /// around it measure the failover.
    pub fn hits_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::KillTwoReplicas
                | Fault::PauseLeader
                | Fault::CutLeaderCatalog
                | Fault::CutFrontendLeader
                | Fault::FillLeaderDisk
        )
    }

    /// How long the fault lasts before it is healed. A gray fault lasts
    /// longer than a process fault: a replica cut from the catalog reports
    /// itself not ready only after 1.5 s (order/src/readiness.rs), and a
    /// front-end cut from the catalog keeps its cache lease for up to a
    /// second (catalog/src/invalidate.rs), so a shorter cut only slows
    /// trades down.
    pub fn draw_pause(self, rng: &mut StdRng) -> Duration {
        let ms = if Fault::PROCESS.contains(&self) {
            rng.random_range(300..2500)
        } else {
            rng.random_range(500..4000)
        };
        Duration::from_millis(ms)
    }
}

/// What a fault can be aimed at: the ids of the replicas and of the
/// front-ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub replicas: Vec<u32>,
    pub frontends: Vec<u32>,
}

/// One of `ids`, drawn only when there is a choice (a run with one
/// front-end draws the same schedule as before there could be several).
fn any(ids: &[u32], rng: &mut StdRng) -> Option<u32> {
    match ids {
        [] => None,
        [one] => Some(*one),
        _ => Some(ids[rng.random_range(0..ids.len())]),
    }
}

/// A cluster under chaos and the means of its faults. Fields drop in order:
/// the cluster's processes first, then the proxies, then the disks
/// (unmounted once nothing holds a file there).
pub struct Rig {
    pub scratch: Scratch,
    pub links: Option<Links>,
    pub disks: Option<Arc<Disks>>,
}

/// A fault aimed at its targets: what to do, and what to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Kill(Vec<Service>),
    Pause(Service),
    Cut(Vec<Link>),
    Fill(Service),
}

impl Action {
    /// What the report lists as the fault's targets.
    pub fn targets(&self) -> Vec<String> {
        match self {
            Action::Kill(s) => s.iter().map(ToString::to_string).collect(),
            Action::Pause(s) | Action::Fill(s) => vec![s.to_string()],
            Action::Cut(links) => links.iter().map(|(f, t)| format!("{f}->{t}")).collect(),
        }
    }

    /// The front-ends cut from the catalog: their cache lease lapses.
    fn leased_frontends(&self) -> Vec<Service> {
        match self {
            Action::Cut(links) => links
                .iter()
                .filter(|(f, t)| *f == Service::Catalog && matches!(t, Service::Frontend(_)))
                .map(|&(_, t)| t)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The services whose return to normal shows a gray fault healed.
    fn affected(&self) -> Vec<Service> {
        match self {
            Action::Kill(_) | Action::Pause(_) => Vec::new(),
            Action::Fill(s) => vec![*s],
            Action::Cut(links) => {
                let mut all: Vec<Service> = links
                    .iter()
                    .flat_map(|&(f, t)| [f, t])
                    .filter(|s| matches!(s, Service::Order(_)))
                    .collect();
                all.sort();
                all.dedup();
                all
            }
        }
    }
}

/// The replica that says it leads with the highest epoch.
pub async fn current_leader(scratch: &Scratch, ids: &[u32]) -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    for &id in ids {
        if let Some(h) = scratch.cluster.health(Service::Order(id)).await
            && h.role == Role::Leader
            && best.is_none_or(|(e, _)| h.epoch > e)
        {
            best = Some((h.epoch, id));
        }
    }
    best.map(|(_, id)| id)
}

/// Aims `fault` at the cluster as it is now: `None` when it has no target
/// (no replica leads at the moment). A front-end fault hits any one.
pub fn aim(
    fault: Fault,
    leader: Option<u32>,
    targets: &Targets,
    rng: &mut StdRng,
) -> Option<Action> {
    let ids = &targets.replicas;
    let frontend = |rng: &mut StdRng| any(&targets.frontends, rng).map(Service::Frontend);
    let followers: Vec<u32> = ids.iter().copied().filter(|&i| Some(i) != leader).collect();
    let follower = |rng: &mut StdRng| {
        (!followers.is_empty()).then(|| followers[rng.random_range(0..followers.len())])
    };
    let leader_service = leader.map(Service::Order);
    Some(match fault {
        Fault::KillLeader => Action::Kill(vec![leader_service?]),
        Fault::PauseLeader => Action::Pause(leader_service?),
        Fault::KillFollower => Action::Kill(vec![Service::Order(follower(rng)?)]),
        Fault::KillTwoReplicas => {
            let mut two = ids.to_vec();
            let keep = rng.random_range(0..two.len());
            two.remove(keep);
            Action::Kill(two.into_iter().map(Service::Order).collect())
        }
        Fault::KillCatalog => Action::Kill(vec![Service::Catalog]),
        Fault::KillFrontend => Action::Kill(vec![frontend(rng)?]),
        Fault::CutLeaderCatalog => Action::Cut(vec![(leader_service?, Service::Catalog)]),
        Fault::CutLeaderFollower => {
            let (l, f) = (leader_service?, Service::Order(follower(rng)?));
            Action::Cut(vec![(l, f), (f, l)])
        }
        Fault::CutFrontendLeader => {
            let leader = leader_service?;
            Action::Cut(vec![(frontend(rng)?, leader)])
        }
        Fault::CutCatalogFrontend => Action::Cut(vec![(Service::Catalog, frontend(rng)?)]),
        Fault::FillLeaderDisk => Action::Fill(leader_service?),
        Fault::FillFollowerDisk => Action::Fill(Service::Order(follower(rng)?)),
        Fault::FillCatalogDisk => Action::Fill(Service::Catalog),
    })
}

fn links(rig: &Rig) -> anyhow::Result<&Links> {
    rig.links
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("a link fault without proxies on the links"))
}

fn disks(rig: &Rig) -> anyhow::Result<Arc<Disks>> {
    rig.disks
        .clone()
        .ok_or_else(|| anyhow::anyhow!("a disk fault without small disks"))
}

pub async fn inject(rig: &mut Rig, action: &Action) -> anyhow::Result<()> {
    match action {
        Action::Kill(targets) => {
            for &s in targets {
                rig.scratch.cluster.kill(s)?;
            }
        }
        Action::Pause(s) => rig.scratch.cluster.pause(*s)?,
        Action::Cut(cut) => {
            for &link in cut {
                links(rig)?.set(link, LinkMode::Blackhole)?;
            }
        }
        Action::Fill(s) => {
            let (disks, s) = (disks(rig)?, *s);
            let filled = tokio::task::spawn_blocking(move || disks.fill(s)).await??;
            tracing::info!(service = %s, filled, "disk filled");
        }
    }
    Ok(())
}

/// Undoes `action`; for a gray fault, waits until the services it hit are
/// back to normal. Returns those that were not within [`HEAL_TIMEOUT`].
pub async fn heal(rig: &mut Rig, action: &Action) -> anyhow::Result<Vec<String>> {
    match action {
        Action::Kill(targets) => {
            for &s in targets {
                rig.scratch.cluster.start_and_wait(s).await?;
            }
        }
        Action::Pause(s) => rig.scratch.cluster.resume(*s)?,
        Action::Cut(cut) => {
            for &link in cut {
                links(rig)?.set(link, LinkMode::Pass)?;
            }
        }
        Action::Fill(s) => disks(rig)?.free(*s)?,
    }
    let mut unhealed = Vec::new();
    for s in action.affected() {
        if let Err(e) = back_to_normal(&rig.scratch, s).await {
            let last = rig
                .scratch
                .cluster
                .health(s)
                .await
                .map_or("no answer".to_string(), |h| format!("{h:?}"));
            unhealed.push(format!("{e}; {s} last said: {last}"));
        }
    }
    Ok(unhealed)
}

/// Times front-end `s` saw its cache lease lapse, from its `/metrics`
/// (`None` when it does not answer).
async fn lease_lapses(rig: &Rig, http: &reqwest::Client, s: Service) -> Option<u64> {
    let url = format!("{}/metrics", rig.scratch.cluster.url(s));
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    common::metrics::sample(&text, "bazaar_cache_lease_lapses_total")
}

/// Lets `action` last `down`, watching what the services it hits say on
/// `/health` (every 100 ms): the distinct states seen, such as
/// `order-2 storage full` or `order-3 not ready`, show the fault bit. A
/// front-end cut from the catalog shows it by its cache lease lapsing.
pub async fn watch(rig: &Rig, action: &Action, down: Duration) -> Vec<String> {
    let until = tokio::time::Instant::now() + down;
    let watched = action.affected();
    let mut seen = std::collections::BTreeSet::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default();
    let mut leased = Vec::new();
    for s in action.leased_frontends() {
        leased.push((s, lease_lapses(rig, &http, s).await));
    }
    while tokio::time::Instant::now() < until {
        for &(s, before) in &leased {
            let now = lease_lapses(rig, &http, s).await;
            if before.is_some() && now > before {
                seen.insert(format!("{s} cache lease lapsed"));
            }
        }
        for &s in &watched {
            match rig.scratch.cluster.health(s).await {
                None => seen.insert(format!("{s} no answer")),
                Some(h) if h.storage != StorageState::Ok => {
                    seen.insert(format!("{s} storage {}", h.storage.as_str()))
                }
                Some(h) if !h.ready => seen.insert(format!("{s} not ready")),
                Some(_) => false,
            };
        }
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + WATCH_EVERY)).await;
    }
    seen.into_iter().collect()
}

/// How often [`watch`] looks.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Waits until `s` answers, is ready, its storage works and it is not
/// catching up.
async fn back_to_normal(scratch: &Scratch, s: Service) -> Result<(), common::wait::TimedOut> {
    try_poll(
        &format!("{s} to be back to normal"),
        HEAL_TIMEOUT,
        Duration::from_millis(50),
        || async move {
            scratch
                .cluster
                .health(s)
                .await
                .filter(|h| h.ready && h.storage == StorageState::Ok && h.role != Role::CatchingUp)
        },
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn targets(frontends: &[u32]) -> Targets {
        Targets {
            replicas: vec![1, 2, 3],
            frontends: frontends.to_vec(),
        }
    }

    #[test]
    fn faults_aim_at_the_leader_of_the_moment() {
        let mut rng = StdRng::seed_from_u64(1);
        let ids = targets(&[1]);
        let leader = Service::Order(2);
        assert_eq!(
            aim(Fault::CutLeaderCatalog, Some(2), &ids, &mut rng),
            Some(Action::Cut(vec![(leader, Service::Catalog)]))
        );
        assert_eq!(
            aim(Fault::CutFrontendLeader, Some(2), &ids, &mut rng),
            Some(Action::Cut(vec![(Service::Frontend(1), leader)]))
        );
        assert_eq!(
            aim(Fault::FillLeaderDisk, Some(2), &ids, &mut rng),
            Some(Action::Fill(leader))
        );
        let Some(Action::Cut(both)) = aim(Fault::CutLeaderFollower, Some(2), &ids, &mut rng) else {
            panic!("a cut between the leader and a follower");
        };
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].0, leader);
        assert_eq!(both[1], (both[0].1, leader), "both directions");
        assert_ne!(both[0].1, leader);
        let Some(Action::Fill(follower)) = aim(Fault::FillFollowerDisk, Some(2), &ids, &mut rng)
        else {
            panic!("a follower's disk");
        };
        assert_ne!(follower, leader);
    }

    #[test]
    fn front_end_faults_hit_any_front_end_and_one_draws_nothing() {
        let several = targets(&[1, 2]);
        let mut rng = StdRng::seed_from_u64(5);
        let mut hit = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let Some(Action::Kill(k)) = aim(Fault::KillFrontend, Some(1), &several, &mut rng)
            else {
                panic!("a kill");
            };
            hit.extend(k);
            let Some(Action::Cut(c)) = aim(Fault::CutCatalogFrontend, None, &several, &mut rng)
            else {
                panic!("a cut without a leader too");
            };
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].0, Service::Catalog);
            hit.insert(c[0].1);
            let Some(Action::Cut(c)) = aim(Fault::CutFrontendLeader, Some(3), &several, &mut rng)
            else {
                panic!("a cut");
            };
            assert_eq!(c[0].1, Service::Order(3));
            hit.insert(c[0].0);
        }
        assert_eq!(
            hit.into_iter().collect::<Vec<_>>(),
            [Service::Frontend(1), Service::Frontend(2)]
        );
        let cut = aim(Fault::CutCatalogFrontend, None, &several, &mut rng).unwrap();
        assert_eq!(cut.leased_frontends().len(), 1);
        assert!(cut.affected().is_empty(), "no replica to wait for");
        // One front-end: aimed without a draw, so the schedule is the same.
        let (mut a, mut b) = (StdRng::seed_from_u64(9), StdRng::seed_from_u64(9));
        assert_eq!(
            aim(Fault::KillFrontend, Some(1), &targets(&[1]), &mut a),
            Some(Action::Kill(vec![Service::Frontend(1)]))
        );
        assert_eq!(a.random::<u64>(), b.random::<u64>());
    }

    #[test]
    fn without_a_leader_leader_faults_have_no_target() {
        let mut rng = StdRng::seed_from_u64(1);
        for fault in [
            Fault::KillLeader,
            Fault::PauseLeader,
            Fault::CutLeaderCatalog,
            Fault::CutLeaderFollower,
            Fault::CutFrontendLeader,
            Fault::FillLeaderDisk,
        ] {
            assert_eq!(
                aim(fault, None, &targets(&[1]), &mut rng),
                None,
                "{fault:?}"
            );
        }
        assert_eq!(
            aim(Fault::FillCatalogDisk, None, &targets(&[1]), &mut rng),
            Some(Action::Fill(Service::Catalog))
        );
    }

    #[test]
    fn every_kind_has_its_own_name_and_gray_faults_last_longer() {
        let all: Vec<Fault> = Fault::PROCESS
            .into_iter()
            .chain(Fault::LINKS)
            .chain(Fault::FRONTEND_LINKS)
            .chain(Fault::DISKS)
            .collect();
        let mut names: Vec<&str> = all.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(Fault::CutLeaderCatalog.draw_pause(&mut rng) >= Duration::from_millis(500));
            assert!(Fault::KillLeader.draw_pause(&mut rng) < Duration::from_millis(2500));
        }
    }
}
