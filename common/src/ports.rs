//! Free loopback ports for a cluster started on the fly (tests, benches,
//! scratch clusters).

/// Free loopback ports, all held at once so they differ.
///
/// They are taken below the kernel's ephemeral range where it leaves room:
/// a port from that range (what binding port 0 gives) can be taken by any
/// outgoing connection's local end between this pick and the service's
/// own bind, and the service then fails to start ("address in use").
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // The kernel may hand a port it just freed to the next caller, and
    // clusters started at once in one process (tests run in parallel) would
    // then share it: this process never hands out the same port twice.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .map_err(|_| anyhow::anyhow!("the port registry is poisoned"))?;
    let below_ephemeral = below_ephemeral_range();
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(n);
    // Bounded: either range holds thousands of ports.
    for _ in 0..n.saturating_mul(64).max(64) {
        if ports.len() == n {
            break;
        }
        let wanted = below_ephemeral
            .as_ref()
            .map_or(0, |range| rand::random_range(range.clone()));
        if wanted != 0 && handed_out.contains(&wanted) {
            continue;
        }
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", wanted)) else {
            continue;
        };
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    anyhow::ensure!(ports.len() == n, "could not find {n} unused ports");
    Ok(ports)
}

/// The ports from 10000 up to the start of the kernel's ephemeral range,
/// when that leaves at least a thousand; `None` otherwise (then port 0).
fn below_ephemeral_range() -> Option<std::ops::Range<u16>> {
    const FROM: u16 = 10_000;
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let start: u16 = text.split_whitespace().next()?.parse().ok()?;
    (start >= FROM + 1_000).then_some(FROM..start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_differ_and_avoid_the_ephemeral_range() {
        let ports = free_ports(40).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 40);
        if let Some(range) = below_ephemeral_range() {
            assert!(ports.iter().all(|p| range.contains(p)), "{ports:?}");
        }
        for p in ports {
            drop(std::net::TcpListener::bind(("127.0.0.1", p)).expect("still free"));
        }
    }
}
