//! The links of a chaos cluster, each through its own [`FaultProxy`]: every
//! replica's link to the catalog and to every other replica, every
//! front-end's link to every replica and, with several front-ends, the
//! catalog's link to every front-end (it tells each of them of every
//! trade's invalidation and renews their cache leases before the trade is
//! acknowledged; with one front-end those notices are best effort and
//! change nothing a client sees, so that link goes direct). A service
//! reaches a peer through the proxy because its process gets a per-process
//! port override (`BAZAAR_CATALOG__PORT`, `BAZAAR_ORDERS__<ID>__PORT`,
//! `BAZAAR_FRONTEND__PORT`, `BAZAAR_EXTRA_FRONTENDS__<ID>__PORT`), so
//! cutting one proxy cuts exactly one direction of one link. All pass until
//! a fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;

use crate::cluster::{Cluster, Service};
use crate::proxy::{FaultProxy, LinkMode};

/// One direction of a link: `from` calls `to`.
pub type Link = (Service, Service);

pub struct Links {
    proxies: BTreeMap<Link, FaultProxy>,
}

/// `catalog`, `order-2` or `frontend-2` as a `host:port` to connect to.
fn addr(cluster: &Cluster, s: Service) -> anyhow::Result<SocketAddr> {
    let (host, port) = match s {
        Service::Catalog => (
            cluster.config.catalog.host.clone(),
            cluster.config.catalog.port,
        ),
        Service::Order(id) => {
            let o = cluster
                .config
                .order(id)
                .with_context(|| format!("no replica {id} in the config"))?;
            (o.host.clone(), o.port)
        }
        Service::Frontend(id) => {
            let f = cluster
                .config
                .frontend(id)
                .with_context(|| format!("no front-end {id} in the config"))?;
            (f.host.clone(), f.port)
        }
    };
    format!("{host}:{port}")
        .parse()
        .with_context(|| format!("{s} listens on {host}:{port}, not an IP address"))
}

/// The environment variable that points `to`'s port elsewhere.
fn port_var(to: Service) -> String {
    match to {
        Service::Catalog => "BAZAAR_CATALOG__PORT".into(),
        Service::Order(id) => format!("BAZAAR_ORDERS__{id}__PORT"),
        Service::Frontend(1) => "BAZAAR_FRONTEND__PORT".into(),
        Service::Frontend(id) => format!("BAZAAR_EXTRA_FRONTENDS__{id}__PORT"),
    }
}

impl Links {
    /// Starts a proxy on every link of `cluster` and sets the overrides for
    /// the services' next starts (call it before starting them).
    pub async fn install(cluster: &mut Cluster) -> anyhow::Result<Links> {
        let replicas: Vec<Service> = cluster
            .services()
            .into_iter()
            .filter(|s| matches!(s, Service::Order(_)))
            .collect();
        let frontends = cluster.frontends();
        let mut links: Vec<Link> = Vec::new();
        for &r in &replicas {
            links.push((r, Service::Catalog));
            links.extend(replicas.iter().filter(|&&p| p != r).map(|&p| (r, p)));
            links.extend(frontends.iter().map(|&f| (f, r)));
        }
        if frontends.len() > 1 {
            links.extend(frontends.iter().map(|&f| (Service::Catalog, f)));
        }
        let mut proxies = BTreeMap::new();
        for (from, to) in links {
            let proxy = FaultProxy::start(addr(cluster, to)?)
                .await
                .with_context(|| format!("cannot start the proxy of {from} -> {to}"))?;
            cluster.set_env(from, &port_var(to), Some(&proxy.port().to_string()));
            proxies.insert((from, to), proxy);
        }
        Ok(Links { proxies })
    }

    /// Sets the mode of one link (a link without a proxy is an error).
    pub fn set(&self, link: Link, mode: LinkMode) -> anyhow::Result<()> {
        self.proxies
            .get(&link)
            .with_context(|| format!("no proxy on {} -> {}", link.0, link.1))?
            .set(mode);
        Ok(())
    }

    /// Connections each proxy accepted: every link was used through it.
    pub fn accepted(&self) -> BTreeMap<String, u64> {
        self.proxies
            .iter()
            .map(|((from, to), p)| (format!("{from}->{to}"), p.accepted()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_own_port_override() {
        let vars: Vec<String> = [
            Service::Catalog,
            Service::Order(2),
            Service::Frontend(1),
            Service::Frontend(3),
        ]
        .into_iter()
        .map(port_var)
        .collect();
        assert_eq!(
            vars,
            [
                "BAZAAR_CATALOG__PORT",
                "BAZAAR_ORDERS__2__PORT",
                "BAZAAR_FRONTEND__PORT",
                "BAZAAR_EXTRA_FRONTENDS__3__PORT"
            ]
        );
    }
}
