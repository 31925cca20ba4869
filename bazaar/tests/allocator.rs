//! The storage services run with the allocator options they were measured
//! with (`common::allocator`): started without them, they restart
//! themselves in place with them set; a value the caller set is kept.

mod support;

use bazaar::cluster::{ScratchOptions, Service};
use common::allocator::{OPTIONS, PURGE_AT_ONCE, PURGE_ENV, RECLAIM_ENV};
use support::TestCluster;

/// The value of `name` in the environment of process `pid`.
fn env_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the process runs");
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_services_run_with_the_allocator_options() {
    let mut t = TestCluster::start_with_env(
        ScratchOptions::default(),
        &[(Service::Catalog, RECLAIM_ENV, "0")],
    )
    .await;
    let (status, body) = t
        .post(
            "/orders",
            r#"{"name":"AMD","quantity":1,"type":"buy"}"#,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for id in 1..=3 {
        let pid = t.cluster.pid(Service::Order(id)).expect("a pid");
        for (name, value) in OPTIONS {
            assert_eq!(
                env_of(pid, name).as_deref(),
                Some(value),
                "order-{id} (pid {pid}) runs with {name}, in the process it was started as"
            );
        }
    }
    let catalog = t.cluster.pid(Service::Catalog).expect("a pid");
    assert_eq!(
        env_of(catalog, RECLAIM_ENV).as_deref(),
        Some("0"),
        "the caller's value is kept"
    );
    assert_eq!(
        env_of(catalog, PURGE_ENV).as_deref(),
        Some(PURGE_AT_ONCE),
        "the option the caller did not set is added"
    );
    // A replica killed and started again sets it again.
    t.cluster.kill(Service::Order(2)).unwrap();
    let pid = t.cluster.start(Service::Order(2)).unwrap();
    common::wait::wait_until(
        "order-2 restarted with the option",
        std::time::Duration::from_secs(10),
        || {
            let set = OPTIONS
                .iter()
                .all(|(name, value)| env_of(pid, name).as_deref() == Some(*value));
            async move { set }
        },
    )
    .await;
}
