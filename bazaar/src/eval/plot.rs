//! The pictures of `bazaar eval`: latency against trade probability
//! (`latency.svg`) and the front-end cache after each request (`cache.svg`).

use std::path::Path;

use client::Report;
use plotters::prelude::*;

use super::{CacheTrace, EvalRow};

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// p50 and p99 latency per request type against p, cache on and off.
pub(super) fn latency(path: &Path, rows: &[EvalRow]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let panels = root.split_evenly((1, 3));
    type Pick = fn(&Report) -> &client::OpStats;
    let kinds: [(&str, Pick); 3] = [
        ("lookup", |r| &r.lookup),
        ("trade", |r| &r.trade),
        ("query", |r| &r.query),
    ];
    for (panel, (name, pick)) in panels.iter().zip(kinds) {
        let max = rows
            .iter()
            .map(|r| pick(&r.report).p99_ms)
            .fold(0.0f64, f64::max)
            .max(0.01)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{name} latency"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.05f64..0.85f64, 0f64..max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("trade probability p")
            .y_desc("ms")
            .draw()
            .map_err(plot_err)?;
        let series: [(bool, bool, RGBColor, &str); 4] = [
            (true, false, BLUE, "p50 cache on"),
            (false, false, RED, "p50 cache off"),
            (true, true, CYAN, "p99 cache on"),
            (false, true, MAGENTA, "p99 cache off"),
        ];
        for (cache, p99, color, label) in series {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.cache == cache && pick(&r.report).count > 0)
                .map(|r| {
                    let s = pick(&r.report);
                    (r.prob, if p99 { s.p99_ms } else { s.p50_ms })
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// A bar per cached stock per request (darker = more recently used), a
/// black dot on the stock each lookup asked for, a red one for trades.
pub(super) fn cache(path: &Path, trace: &CacheTrace, capacity: usize) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let end = trace.steps.len() as f64;
    let n = trace.stocks.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "front-end cache after each request (LRU, {capacity} entries; darker = more recently used; \
                 dot = lookup, red = trade)"
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end, -0.5f64..(n as f64 - 0.5))
        .map_err(plot_err)?;
    let names = trace.stocks.clone();
    chart
        .configure_mesh()
        .x_desc("request")
        .y_labels(n)
        .y_label_formatter(&|y| {
            names
                .iter()
                .enumerate()
                .find(|(i, _)| (*i as f64 - y).abs() < 0.25)
                .map(|(_, name)| name.clone())
                .unwrap_or_default()
        })
        .disable_x_mesh()
        .draw()
        .map_err(plot_err)?;
    let index = |name: &str| trace.stocks.iter().position(|s| s == name);
    let bars = trace
        .steps
        .iter()
        .enumerate()
        .flat_map(|(step, (_, _, entries))| {
            entries.iter().enumerate().filter_map(move |(rank, name)| {
                let shade = 1.0 - 0.75 * rank as f64 / capacity.max(1) as f64;
                index(name).map(|i| {
                    Rectangle::new(
                        [
                            (step as f64, i as f64 - 0.35),
                            (step as f64 + 1.0, i as f64 + 0.35),
                        ],
                        BLUE.mix(shade).filled(),
                    )
                })
            })
        });
    chart.draw_series(bars).map_err(plot_err)?;
    let dots = trace
        .steps
        .iter()
        .enumerate()
        .filter_map(|(step, (name, trade, _))| {
            index(name).map(|i| {
                let color = if *trade { RED } else { BLACK };
                Circle::new((step as f64 + 0.5, i as f64), 3, color.filled())
            })
        });
    chart.draw_series(dots).map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
