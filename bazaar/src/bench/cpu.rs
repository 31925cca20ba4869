//! CPU figures of `bazaar bench`: each service's user and system time from
//! `/proc/<pid>/stat`, read before and after a phase, so a phase's CPU per
//! request is the difference over the requests it completed (the load
//! generator, in this process, is not counted).

use serde::Serialize;

/// CPU one service spent over a phase, per completed request.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCpu {
    pub service: String,
    /// User plus system time over the phase.
    pub cpu_ms: f64,
    pub us_per_request: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`;
/// 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system ticks of `pid`, 0 when it is gone.
fn ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis are plain: utime and stime are fields 14 and 15.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// Ticks of every service at one moment.
pub(super) struct CpuMark(Vec<u64>);

pub(super) fn mark(pids: &[(String, u32)]) -> CpuMark {
    CpuMark(pids.iter().map(|(_, p)| ticks(*p)).collect())
}

/// Each service's CPU between `before` and now, per request of `requests`.
pub(super) fn since(pids: &[(String, u32)], before: &CpuMark, requests: u64) -> Vec<ServiceCpu> {
    pids.iter()
        .zip(&before.0)
        .map(|((service, pid), &then)| {
            #[allow(clippy::cast_precision_loss)]
            let cpu_ms = ticks(*pid).saturating_sub(then) as f64 / TICKS_PER_SECOND * 1000.0;
            #[allow(clippy::cast_precision_loss)]
            let us_per_request = cpu_ms * 1000.0 / requests.max(1) as f64;
            ServiceCpu {
                service: service.clone(),
                cpu_ms,
                us_per_request,
            }
        })
        .collect()
}
