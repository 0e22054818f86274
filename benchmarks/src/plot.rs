//! SVG plots of a run: delivery-latency CDF per dm step, delivered msg/s against the offered rate (ours and the
//! peer), node RSS against idle connections. plotters with only its SVG backend; text uses its built-in naive font
//! metrics, which is enough for axis labels.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn steps(run: &Value) -> Vec<&Value> {
    run["run"]["results"]["steps"]
        .as_array()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn dm_runs(runs: &[Value]) -> Vec<&Value> {
    runs.iter()
        .filter(|r| r["run"]["scenario"]["kind"].as_str() == Some("dm"))
        .collect()
}

fn boxed<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {error:?}")
}

/// Writes the plots that the data allows; returns their file names.
pub fn write_plots(ours: &[Value], peer: &[Value], dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    if let Some(run) = crate::report::workload_dm(ours) {
        let name = "latency-cdf.svg";
        latency_cdf(run, dm_runs(peer).first().copied(), &dir.join(name))?;
        written.push(name.to_owned());
        let name = "throughput-vs-rate.svg";
        throughput(run, dm_runs(peer).first().copied(), &dir.join(name))?;
        written.push(name.to_owned());
    }
    // One idle file per step (run.sh restarts the nodes between steps): collect the points of all of them.
    let mut points: Vec<(f64, f64)> = ours
        .iter()
        .filter(|r| r["run"]["scenario"]["kind"].as_str() == Some("idle"))
        .flat_map(steps)
        .filter_map(|s| {
            let nodes = s["nodes"].as_array()?;
            let rss: f64 = nodes
                .iter()
                .filter_map(|n| n["rss_after_mib"].as_f64())
                .sum();
            Some((s["connected"].as_f64()?, rss))
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !points.is_empty() {
        let name = "rss-vs-connections.svg";
        rss_vs_connections(&points, &dir.join(name))?;
        written.push(name.to_owned());
    }
    Ok(written)
}

/// Latency (log x) against the cumulative fraction, one line per step, ours and the peer's.
fn latency_cdf(run: &Value, peer: Option<&Value>, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(boxed)?;
    let mut series = Vec::new();
    let mut max_ms: f64 = 1.0;
    let labelled = steps(run).into_iter().map(|s| ("ours", s)).chain(
        peer.map(steps)
            .unwrap_or_default()
            .into_iter()
            .map(|s| ("peer", s)),
    );
    for (who, step) in labelled {
        let points: Vec<(f64, f64)> = step["latency_cdf"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| Some((p[0].as_f64()?.max(0.01), p[1].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(last) = points.last() {
            max_ms = max_ms.max(last.0);
        }
        series.push((format!("{who} {} msg/s", step["target_rate"]), points));
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "dm delivery latency CDF (send -> recipient)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((0.05f64..max_ms * 1.2).log_scale(), 0f64..1.0)
        .map_err(boxed)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("fraction of deliveries")
        .draw()
        .map_err(boxed)?;
    for (index, (label, points)) in series.into_iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(boxed)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(boxed)?;
    root.present().map_err(boxed)?;
    Ok(())
}

/// Delivered msg/s and p99 against the offered rate, ours and (when present) the peer's.
fn throughput(ours: &Value, peer: Option<&Value>, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(boxed)?;
    let collect = |run: &Value| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = steps(run)
            .iter()
            .filter_map(|s| Some((s["target_rate"].as_f64()?, s["delivered_per_s"].as_f64()?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let mut lines = vec![("ours (durable)".to_owned(), collect(ours))];
    if let Some(peer) = peer {
        lines.push((
            "peer: Socket.IO + Redis adapter (persists nothing)".to_owned(),
            collect(peer),
        ));
    }
    let max = lines
        .iter()
        .flat_map(|(_, ps)| ps.iter().flat_map(|p| [p.0, p.1]))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("dm: delivered msg/s vs offered msg/s", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max, 0f64..max)
        .map_err(boxed)?;
    chart
        .configure_mesh()
        .x_desc("offered rate, msg/s")
        .y_desc("delivered, msg/s")
        .draw()
        .map_err(boxed)?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (max, max)],
            BLACK.mix(0.3),
        ))
        .map_err(boxed)?
        .label("delivered = offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (index, (label, points)) in lines.into_iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(boxed)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(boxed)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(boxed)?;
    root.present().map_err(boxed)?;
    Ok(())
}

/// Summed node RSS after connecting, per idle step.
fn rss_vs_connections(points: &[(f64, f64)], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(boxed)?;
    let max_x = points.iter().map(|p| p.0).fold(1.0f64, f64::max) * 1.1;
    let max_y = points.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "idle: node RSS (all nodes) vs connections",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(boxed)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("RSS, MiB")
        .draw()
        .map_err(boxed)?;
    let color = PALETTE[0];
    chart
        .draw_series(LineSeries::new(points.to_vec(), color.stroke_width(2)))
        .map_err(boxed)?;
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
        .map_err(boxed)?;
    root.present().map_err(boxed)?;
    Ok(())
}
