//! Memory figures of `bazaar bench`: the services' resident memory sampled
//! over the trade phases, and the machine's total, both from `/proc`.

use super::{RSS_SAMPLE_EVERY, Rss};

/// Samples the RSS of `pids` until `stop` fires; returns the samples in order.
pub(super) async fn sample_rss(
    pids: Vec<u32>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Vec<u64>> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => samples.push(pids.iter().map(|p| rss_kib(*p)).collect()),
            _ = &mut stop => break,
        }
    }
    samples.push(pids.iter().map(|p| rss_kib(*p)).collect());
    samples
}

/// Start, middle, end and peak of each service's samples over both trade
/// phases; the middle and end of those over the 64-connection phase, the
/// medians of its halves and its peak over its median (`samples[t][i]` is
/// service `i` at time `t`).
pub(super) fn summarize(
    pids: &[(String, u32)],
    samples: &[Vec<u64>],
    steady: &[Vec<u64>],
) -> Vec<Rss> {
    let at = |samples: &[Vec<u64>], t: usize, i: usize| samples.get(t).map_or(0, |s| s[i]);
    pids.iter()
        .enumerate()
        .map(|(i, (service, _))| {
            let series: Vec<u64> = samples.iter().map(|s| s[i]).collect();
            let start = series.first().copied().unwrap_or(0);
            let mid = series.get(series.len() / 2).copied().unwrap_or(0);
            let end = series.last().copied().unwrap_or(0);
            let steady_mid = at(steady, steady.len() / 2, i);
            let steady_end = at(steady, steady.len().saturating_sub(1), i);
            let phase: Vec<u64> = steady.iter().map(|s| s[i]).collect();
            let (first, second) = phase.split_at(phase.len() / 2);
            Rss {
                service: service.clone(),
                start_kib: start,
                mid_kib: mid,
                peak_kib: series.iter().copied().max().unwrap_or(0),
                end_kib: end,
                growth_pct: growth_pct(start, end),
                second_half_growth_pct: growth_pct(mid, end),
                steady_mid_kib: steady_mid,
                steady_growth_pct: growth_pct(steady_mid, steady_end),
                steady_trend_pct: growth_pct(median(first), median(second)),
                steady_peak_over_median_pct: growth_pct(
                    median(&phase),
                    phase.iter().copied().max().unwrap_or(0),
                ),
            }
        })
        .collect()
}

/// The middle sample (the upper one of an even count); 0 when none.
fn median(samples: &[u64]) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

fn growth_pct(from: u64, to: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    if from == 0 {
        0.0
    } else {
        (to as f64 - from as f64) / from as f64 * 100.0
    }
}

pub(super) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

pub(super) fn machine_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[u64]) -> Vec<Vec<u64>> {
        values.iter().map(|&v| vec![v]).collect()
    }

    /// A memory that rises and falls with each segment, with a spike at
    /// each close, has no trend; one that grows has.
    #[test]
    fn the_trend_is_the_medians_of_the_halves() {
        let pids = [("order-1".to_string(), 1)];
        let saw: Vec<u64> = (0..40)
            .map(|t| 46 + t % 5 + 12 * u64::from(t % 5 == 4))
            .collect();
        let flat = &summarize(&pids, &series(&saw), &series(&saw))[0];
        assert!(flat.steady_trend_pct.abs() < 1.0, "{flat:?}");
        assert!(flat.steady_peak_over_median_pct > 20.0, "{flat:?}");
        let rising: Vec<u64> = (0..40).map(|t| 40 + t).collect();
        let grows = &summarize(&pids, &series(&rising), &series(&rising))[0];
        assert!(grows.steady_trend_pct > 30.0, "{grows:?}");
        assert_eq!(median(&[]), 0);
    }
}
