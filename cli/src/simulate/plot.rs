//! `--plot FILE.svg`: hit rate and bytes moved over time, per window of steps.

use std::path::Path;

use plotters::prelude::*;

use super::driver::StepSample;

/// Per-window series of one run.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Window start steps.
    pub x: Vec<f64>,
    /// GPU hit rate, %.
    pub gpu: Vec<f64>,
    /// GPU + CPU tier hit rate, %.
    pub gpu_cpu: Vec<f64>,
    /// GPU + CPU + disk hit rate, %.
    pub all: Vec<f64>,
    /// MiB stored into the CPU tier.
    pub cpu_stored: Vec<f64>,
    /// MiB loaded from the CPU tier.
    pub cpu_loaded: Vec<f64>,
    /// MiB stored on disk.
    pub disk_stored: Vec<f64>,
    /// MiB promoted from disk.
    pub disk_loaded: Vec<f64>,
}

/// Sums `samples` over windows of `window` steps. Hit rates of windows without prompt blocks
/// repeat the previous window's.
pub fn windows(samples: &[StepSample], window: usize, block_bytes: usize) -> Series {
    let mut s = Series::default();
    let mib = block_bytes as f64 / (1u64 << 20) as f64;
    let mut last = (0.0, 0.0, 0.0);
    for (i, w) in samples.chunks(window.max(1)).enumerate() {
        let sum = |f: fn(&StepSample) -> u32| w.iter().map(|x| f64::from(f(x))).sum::<f64>();
        let (g, c, d, m) = (sum(|x| x.gpu), sum(|x| x.cpu), sum(|x| x.disk), sum(|x| x.miss));
        let total = g + c + d + m;
        if total > 0.0 {
            last = (100.0 * g / total, 100.0 * (g + c) / total, 100.0 * (g + c + d) / total);
        }
        s.x.push((i * window) as f64);
        s.gpu.push(last.0);
        s.gpu_cpu.push(last.1);
        s.all.push(last.2);
        s.cpu_stored.push(sum(|x| x.cpu_stored) * mib);
        s.cpu_loaded.push(sum(|x| x.cpu_loaded) * mib);
        s.disk_stored.push(sum(|x| x.disk_stored) * mib);
        s.disk_loaded.push(sum(|x| x.disk_loaded) * mib);
    }
    s
}

fn pts(x: &[f64], y: &[f64]) -> Vec<(f64, f64)> {
    x.iter().copied().zip(y.iter().copied()).collect()
}

/// Draws the offloading run (`with`) and the comparison run's GPU hit rate (`without`).
pub fn draw(path: &Path, with: &Series, without: &Series, window: usize) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(450);
    let x_max = with.x.iter().chain(&without.x).fold(1.0f64, |a, &b| a.max(b)) + window as f64;

    let mut chart = ChartBuilder::on(&top)
        .caption(format!("Prompt blocks not recomputed, per window of {window} steps"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("scheduler step")
        .y_desc("hit rate (% of prompt blocks)")
        .draw()
        .map_err(|e| err(&e))?;
    let hit_lines: [(&str, &[f64], &[f64], RGBColor); 4] = [
        ("GPU + CPU + disk (kvtier)", &with.x, &with.all, RGBColor(200, 30, 30)),
        ("GPU + CPU (kvtier)", &with.x, &with.gpu_cpu, RGBColor(230, 140, 0)),
        ("GPU prefix cache (kvtier run)", &with.x, &with.gpu, RGBColor(30, 90, 200)),
        ("no offloading (GPU only)", &without.x, &without.gpu, RGBColor(90, 90, 90)),
    ];
    for (name, x, y, color) in hit_lines {
        chart
            .draw_series(LineSeries::new(pts(x, y), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let y_max = [&with.cpu_stored, &with.cpu_loaded, &with.disk_stored, &with.disk_loaded]
        .iter()
        .flat_map(|v| v.iter())
        .fold(1.0f64, |a, &b| a.max(b))
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("Data moved by kvtier, MiB per window of {window} steps"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("scheduler step").y_desc("MiB").draw().map_err(|e| err(&e))?;
    let byte_lines: [(&str, &[f64], RGBColor); 4] = [
        ("GPU -> CPU (stored)", &with.cpu_stored, RGBColor(30, 90, 200)),
        ("CPU -> GPU (loaded)", &with.cpu_loaded, RGBColor(230, 140, 0)),
        ("CPU -> disk (stored)", &with.disk_stored, RGBColor(30, 150, 60)),
        ("disk -> CPU (promoted)", &with.disk_loaded, RGBColor(200, 30, 30)),
    ];
    for (name, y, color) in byte_lines {
        chart
            .draw_series(LineSeries::new(pts(&with.x, y), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
