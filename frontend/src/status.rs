//! `GET /status`: every service's health, the leader and its recent
//! changes, and the cache contents, gathered on demand.

use axum::Json;
use axum::extract::State;
use common::types::{CacheStatus, ClusterStatus, Health, LeaderInfo, ServiceStatus};
use futures_util::future::join_all;

use crate::routes::AppState;

pub async fn status(State(s): State<AppState>) -> Json<ClusterStatus> {
    let leaders = &s.leaders;
    let mut targets = vec![("catalog".to_string(), leaders.catalog_url().to_string())];
    targets.extend(
        leaders
            .replicas()
            .iter()
            .map(|r| (format!("order-{}", r.id), r.url.clone())),
    );
    let probes = targets.into_iter().map(|(service, url)| async move {
        let health = leaders.health_of(&url).await;
        ServiceStatus {
            service,
            url,
            up: health.is_some(),
            health,
        }
    });
    let mut services = join_all(probes).await;
    let current = leaders.current();
    services.push(ServiceStatus {
        service: "frontend".into(),
        url: String::new(),
        up: true,
        health: Some(Health {
            service: "frontend".into(),
            id: current.as_ref().map(|c| c.id),
            role: "up".into(),
            epoch: current.as_ref().map_or(0, |c| c.epoch),
            highest: None,
        }),
    });
    let stats = &s.cache.stats;
    Json(ClusterStatus {
        leader: current.map(|c| LeaderInfo {
            id: c.id,
            epoch: c.epoch,
        }),
        selections: leaders.stats.selections.get(),
        leader_changes: leaders.history(),
        services,
        cache: CacheStatus {
            capacity: s.cache.capacity(),
            entries: s.cache.names(),
            hits: stats.hits.get(),
            misses: stats.misses.get(),
            evictions: stats.evictions.get(),
            invalidations: stats.invalidations.get(),
        },
    })
}
