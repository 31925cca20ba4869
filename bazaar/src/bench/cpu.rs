//! CPU figures of `bazaar bench`: each service's user and system time from
//! `/proc/<pid>/stat`, and its threads' context switches from their
//! `status` files, read before and after a phase, so a phase's CPU and
//! switches per request are the differences over the requests it completed
//! (the load generator, in this process, is not counted).

use common::proc_stat::{self, TICKS_PER_SECOND};
use serde::Serialize;

/// CPU one service spent over a phase, per completed request.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCpu {
    pub service: String,
    /// User plus system time over the phase.
    pub cpu_ms: f64,
    pub us_per_request: f64,
    /// Context switches of its threads (voluntary and preempted) per
    /// request: each is a thread that went to sleep or was preempted, most
    /// of them woken again by another thread or process. Threads that
    /// ended during the phase are not counted.
    pub switches_per_request: f64,
}

/// User plus system ticks of `pid`, 0 when it is gone.
fn ticks(pid: u32) -> u64 {
    proc_stat::read(Some(pid)).map_or(0, |s| s.cpu_ticks)
}

/// Ticks and context switches of every service at one moment.
pub(super) struct CpuMark(Vec<(u64, u64)>);

fn reading(pid: u32) -> (u64, u64) {
    (ticks(pid), proc_stat::switches(pid).unwrap_or(0))
}

pub(super) fn mark(pids: &[(String, u32)]) -> CpuMark {
    CpuMark(pids.iter().map(|(_, p)| reading(*p)).collect())
}

/// Each service's CPU between `before` and now, per request of `requests`.
pub(super) fn since(pids: &[(String, u32)], before: &CpuMark, requests: u64) -> Vec<ServiceCpu> {
    #[allow(clippy::cast_precision_loss)]
    let requests = requests.max(1) as f64;
    pids.iter()
        .zip(&before.0)
        .map(|((service, pid), &(then, switched))| {
            let (now, switches) = reading(*pid);
            #[allow(clippy::cast_precision_loss)]
            let cpu_ms = now.saturating_sub(then) as f64 / TICKS_PER_SECOND * 1000.0;
            #[allow(clippy::cast_precision_loss)]
            let switches_per_request = switches.saturating_sub(switched) as f64 / requests;
            ServiceCpu {
                service: service.clone(),
                cpu_ms,
                us_per_request: cpu_ms * 1000.0 / requests,
                switches_per_request,
            }
        })
        .collect()
}
