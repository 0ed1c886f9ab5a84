//! The plots of bench/RESULTS.md, drawn from the JSON results: latency
//! percentiles against offered load, delivered notifications per second
//! over each throughput run (single node and floor; cluster), the
//! server's RSS over each run, and the UAs back after a restart.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

fn read(out: &Path, scenario: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(out.join(format!("{scenario}.json"))).ok()?).ok()
}

const COLOURS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

pub fn draw(out: &Path) {
    match read(out, "latency") {
        Some(latency) => latency_plot(&latency, &out.join("latency_vs_load.svg")),
        None => eprintln!("no latency results in {}: skipping its plot", out.display()),
    }
    let timelines: Vec<Value> = ["throughput", "floor"]
        .iter()
        .filter_map(|scenario| read(out, scenario))
        .collect();
    if timelines.is_empty() {
        eprintln!(
            "no throughput results in {}: skipping its plot",
            out.display()
        );
    } else {
        timeline_plot(&timelines, &out.join("throughput_timeline.svg"));
    }
    let with_rss: Vec<Value> = ["throughput", "floor", "latency"]
        .iter()
        .filter_map(|scenario| read(out, scenario))
        .collect();
    rss_plot(&with_rss, &out.join("rss_timeline.svg"));
    match read(out, "restart") {
        Some(restart) => restart_plot(&restart, &out.join("restart_back.svg")),
        None => eprintln!("no restart results in {}: skipping its plot", out.display()),
    }
    draw_cluster(out);
}

/// The cluster's closed-loop runs over time, if `herald-bench cluster` ran.
pub fn draw_cluster(out: &Path) {
    match read(out, "cluster") {
        Some(cluster) => timeline_plot(&[cluster], &out.join("cluster_timeline.svg")),
        None => eprintln!("no cluster results in {}: skipping its plot", out.display()),
    }
}

/// Targets in order of first appearance.
fn unique(labels: impl Iterator<Item = String>) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    for label in labels {
        if !targets.contains(&label) {
            targets.push(label);
        }
    }
    targets
}

/// A latency run's target without its " @ N% of …" suffix.
fn mode_of(run: &Value) -> String {
    let target = run["target"].as_str().unwrap_or("?");
    target.split(" @ ").next().unwrap_or(target).to_owned()
}

/// One panel per percentile; in each, the median over runs per target and
/// offered load.
fn latency_plot(latency: &Value, path: &Path) {
    let runs = latency["runs"].as_array().cloned().unwrap_or_default();
    let targets = unique(runs.iter().map(mode_of));
    let median_at = |target: &str, key: &str| -> Vec<(f64, f64)> {
        let mut offered: Vec<f64> = runs
            .iter()
            .filter(|run| mode_of(run) == target)
            .filter_map(|run| run["offered_per_s"].as_f64())
            .collect();
        offered.sort_by(f64::total_cmp);
        offered.dedup();
        offered
            .into_iter()
            .map(|load| {
                let values: Vec<f64> = runs
                    .iter()
                    .filter(|run| {
                        mode_of(run) == target && run["offered_per_s"].as_f64() == Some(load)
                    })
                    .filter_map(|run| run["to_ua"][key].as_f64())
                    .collect();
                (load, herald_bench::stats::median(&values))
            })
            .collect()
    };
    let x_max = runs
        .iter()
        .filter_map(|run| run["offered_per_s"].as_f64())
        .fold(1.0, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let root = root
        .titled(
            "AS → UA latency against offered load (medians of runs)",
            ("sans-serif", 20),
        )
        .unwrap_or(root);
    let panels = root.split_evenly((1, 3));
    for (panel, (key, label)) in
        panels
            .iter()
            .zip([("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")])
    {
        let series: Vec<(String, Vec<(f64, f64)>)> = targets
            .iter()
            .map(|target| (target.clone(), median_at(target, key)))
            .collect();
        let y_max = series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.1))
            .fold(0.5, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(label, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .expect("chart");
        let _ = chart
            .configure_mesh()
            .x_desc("offered notifications/s")
            .y_desc("ms")
            .x_labels(5)
            .draw();
        for (index, (target, points)) in series.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            if let Ok(drawn) = chart.draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            )) {
                drawn
                    .label(target.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            }
            let _ = chart.draw_series(
                points
                    .iter()
                    .map(|point| Circle::new(*point, 3, colour.filled())),
            );
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw();
    }
    let _ = root.present();
    println!("   -> {}", path.display());
}

/// Every run's delivered/s per 100 ms bucket, Herald's modes and the floor.
fn timeline_plot(results: &[Value], path: &Path) {
    let bucket_s = crate::worker::TIMELINE_BUCKET_US as f64 / 1e6;
    // Closed-loop runs only: a paced run's line is its pacing.
    let series = series_of(results, "delivered_per_s_timeline", bucket_s, 1.0, |run| {
        run["offered_per_s"].as_f64() == Some(0.0)
    });
    line_plot(
        &series,
        path,
        "Delivered notifications per second over each run (100 ms buckets)",
        "delivered/s",
    );
}

/// Every run's server RSS, sampled once a second (`rss_bytes_timeline`).
fn rss_plot(results: &[Value], path: &Path) {
    let series = series_of(results, "rss_bytes_timeline", 1.0, 1e-6, |_| true);
    if series.iter().all(|(_, points)| points.is_empty()) {
        return;
    }
    line_plot(
        &series,
        path,
        "Server RSS over each run (once a second)",
        "RSS, MB",
    );
}

/// Every restart run's UAs back (hello answered) after the server was
/// ready again, cumulative per 100 ms bucket.
fn restart_plot(restart: &Value, path: &Path) {
    let bucket_s = crate::worker::TIMELINE_BUCKET_US as f64 / 1e6;
    // Each bucket's count is of UAs back by its end.
    let series: Vec<(String, Vec<(f64, f64)>)> = series_of(
        std::slice::from_ref(restart),
        "uas_back_timeline",
        bucket_s,
        1.0,
        |_| true,
    )
    .into_iter()
    .map(|(label, points)| {
        let ends = points.into_iter().map(|(x, y)| (x + bucket_s, y));
        (label, std::iter::once((0.0, 0.0)).chain(ends).collect())
    })
    .collect();
    line_plot(
        &series,
        path,
        "UAs back after a restart, from the moment the server was ready",
        "UAs back (hello answered)",
    );
}

/// One labelled line per run of `results` that `keep` keeps: the run's
/// array `field`, one point per `step_s` seconds, values times `scale`.
fn series_of(
    results: &[Value],
    field: &str,
    step_s: f64,
    scale: f64,
    keep: impl Fn(&Value) -> bool,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series = Vec::new();
    for result in results {
        let runs = result["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|run| keep(run));
        for run in runs {
            let points: Vec<(f64, f64)> = run[field]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(index, value)| Some((index as f64 * step_s, value.as_f64()? * scale)))
                .collect();
            series.push((
                format!(
                    "{} run {}",
                    run["target"].as_str().unwrap_or("?"),
                    run["run"]
                ),
                points,
            ));
        }
    }
    series
}

/// Draws `series` (labelled "<target> run <n>"), one colour per target.
fn line_plot(series: &[(String, Vec<(f64, f64)>)], path: &Path, caption: &str, y_desc: &str) {
    let x_max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .expect("chart");
    let _ = chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw();
    let targets = unique(
        series
            .iter()
            .map(|(label, _)| label.split(" run ").next().unwrap_or_default().to_owned()),
    );
    for (label, points) in series {
        let target = label.split(" run ").next().unwrap_or_default();
        let colour = COLOURS[targets.iter().position(|t| t == target).unwrap_or(0) % COLOURS.len()];
        if let Ok(drawn) =
            chart.draw_series(LineSeries::new(points.iter().copied(), colour.mix(0.7)))
        {
            if label.ends_with(" run 1") {
                let name = target.to_owned();
                drawn
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            }
        }
    }
    let _ = chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw();
    let _ = root.present();
    println!("   -> {}", path.display());
}
