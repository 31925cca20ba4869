//! `GET /status`: every service's health, the leader and its recent
//! changes, and the cache contents, gathered on demand.

use axum::Json;
use axum::extract::State;
use common::types::{CacheStatus, ClusterStatus, LeaderInfo, ServiceStatus};
use futures_util::future::join_all;

use crate::state::AppState;

pub async fn status(State(s): State<AppState>) -> Json<ClusterStatus> {
    let selector = &s.selector;
    let mut targets = vec![("catalog".to_string(), selector.catalog_url().to_string())];
    targets.extend(
        selector
            .replicas()
            .iter()
            .map(|r| (format!("order-{}", r.id), r.url.clone())),
    );
    let probes = targets.into_iter().map(|(service, url)| async move {
        let health = selector.health_of(&url).await;
        ServiceStatus {
            service,
            url,
            up: health.is_some(),
            health,
        }
    });
    let mut services = join_all(probes).await;
    services.push(ServiceStatus {
        service: s.name(),
        url: String::new(),
        up: true,
        health: Some(s.health()),
    });
    let others = s.other_frontends.iter().map(|(service, url)| async move {
        let health = selector.health_of(url).await;
        ServiceStatus {
            service: service.clone(),
            url: url.clone(),
            up: health.is_some(),
            health,
        }
    });
    services.extend(join_all(others).await);
    let current = selector.current();
    let stats = &s.cache.stats;
    Json(ClusterStatus {
        leader: current.map(|c| LeaderInfo {
            id: c.id,
            epoch: c.epoch,
        }),
        selections: selector.stats.selections.get(),
        leader_changes: selector.history(),
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
