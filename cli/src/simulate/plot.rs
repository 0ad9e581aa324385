//! `--plot FILE.svg`: hit rates and bytes moved over virtual time in the kvtier run, and the
//! distribution of the time to first token in each configuration.

use std::path::Path;

use plotters::prelude::*;

use super::driver::Sample;

/// Per-window series of one run.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Window starts, virtual seconds.
    pub x: Vec<f64>,
    /// GPU hit rate, %.
    pub gpu: Vec<f64>,
    /// GPU + CPU tier hit rate, %.
    pub gpu_cpu: Vec<f64>,
    /// GPU + CPU + disk (and remote tier) hit rate, %.
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

/// Sums `samples` over windows of `window` virtual seconds. Hit rates of windows without prompt
/// blocks repeat the previous window's.
pub fn windows(samples: &[Sample], window: f64, block_bytes: usize) -> Series {
    let mut s = Series::default();
    let mib = block_bytes as f64 / (1u64 << 20) as f64;
    let Some(first) = samples.first() else { return s };
    let window = if window > 0.0 { window } else { 1.0 };
    let mut last = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < samples.len() {
        let w = ((samples[i].t - first.t) / window).floor();
        let mut j = i;
        while j < samples.len() && ((samples[j].t - first.t) / window).floor() == w {
            j += 1;
        }
        let chunk = &samples[i..j];
        let sum = |f: fn(&Sample) -> u32| chunk.iter().map(|x| f64::from(f(x))).sum::<f64>();
        let (g, c, d, m) = (sum(|x| x.gpu), sum(|x| x.cpu), sum(|x| x.disk + x.remote), sum(|x| x.miss));
        let total = g + c + d + m;
        if total > 0.0 {
            last = (100.0 * g / total, 100.0 * (g + c) / total, 100.0 * (g + c + d) / total);
        }
        s.x.push(first.t + w * window);
        s.gpu.push(last.0);
        s.gpu_cpu.push(last.1);
        s.all.push(last.2);
        s.cpu_stored.push(sum(|x| x.cpu_stored) * mib);
        s.cpu_loaded.push(sum(|x| x.cpu_loaded) * mib);
        s.disk_stored.push(sum(|x| x.disk_stored) * mib);
        s.disk_loaded.push(sum(|x| x.disk_loaded) * mib);
        i = j;
    }
    s
}

fn pts(x: &[f64], y: &[f64]) -> Vec<(f64, f64)> {
    x.iter().copied().zip(y.iter().copied()).collect()
}

/// The cumulative distribution of `v` as (value, % at or below) points.
fn cdf(v: &[f64], floor: f64) -> Vec<(f64, f64)> {
    let mut s: Vec<f64> = v.iter().map(|x| x.max(floor)).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter().enumerate().map(|(i, &x)| (x, 100.0 * (i + 1) as f64 / n)).collect()
}

/// One configuration's TTFTs for the distribution panel.
#[derive(Debug, Clone, Copy)]
pub struct Ttfts<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its TTFTs, seconds.
    pub values: &'a [f64],
}

/// Draws the kvtier run's series (`with`), the comparison run's GPU hit rate (`without`) and the
/// TTFT distributions of every configuration.
pub fn draw(path: &Path, with: &Series, without: &Series, window: f64, ttfts: &[Ttfts<'_>]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 1350)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, rest) = root.split_vertically(450);
    let (middle, bottom) = rest.split_vertically(450);
    let x_min = with.x.first().copied().unwrap_or(0.0);
    let x_max = with.x.iter().chain(&without.x).fold(x_min + window, |a, &b| a.max(b + window));

    let mut chart = ChartBuilder::on(&top)
        .caption(format!("Prompt blocks not recomputed, per window of {window:.1} s"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_max, 0f64..100f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("hit rate (% of prompt blocks)")
        .draw()
        .map_err(|e| err(&e))?;
    let hit_lines: [(&str, &[f64], &[f64], RGBColor); 4] = [
        ("GPU + CPU + lower tiers (kvtier)", &with.x, &with.all, RGBColor(200, 30, 30)),
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
    let mut chart = ChartBuilder::on(&middle)
        .caption(format!("Data moved by kvtier here, MiB per window of {window:.1} s"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("virtual time (s)").y_desc("MiB").draw().map_err(|e| err(&e))?;
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

    // TTFT distribution: log-scaled seconds, floored at 1 ms.
    let floor: f64 = 1e-3;
    let t_max = ttfts.iter().flat_map(|t| t.values.iter()).fold(floor * 10.0, |a, &b| a.max(b)) * 1.5;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Time to first token: share of requests at or below (virtual time)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((floor..t_max).log_scale(), 0f64..100f64)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("TTFT (s, log scale)").y_desc("% of requests").draw().map_err(|e| err(&e))?;
    let colors = [RGBColor(200, 30, 30), RGBColor(230, 140, 0), RGBColor(90, 90, 90)];
    for (t, color) in ttfts.iter().zip(colors.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(cdf(t.values, floor), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("TTFT {}", t.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_group_by_virtual_time() {
        let s = |t: f64, gpu: u32, miss: u32| Sample { t, gpu, miss, cpu_stored: 1, ..Sample::default() };
        let series = windows(&[s(10.0, 1, 1), s(10.5, 1, 1), s(11.2, 0, 0), s(13.9, 0, 4)], 1.0, 1 << 20);
        assert_eq!(series.x, [10.0, 11.0, 13.0]);
        assert_eq!(series.gpu, [50.0, 50.0, 0.0], "an empty window repeats the last rate");
        assert_eq!(series.cpu_stored, [2.0, 1.0, 1.0]);
        assert_eq!(cdf(&[3.0, 1.0, 0.0], 0.5), [(0.5, 100.0 / 3.0), (1.0, 200.0 / 3.0), (3.0, 100.0)]);
    }
}
