//! The fleet simulator's figures: a Markdown table per fleet size, then a CSV of every size
//! and an SVG plot of memory and p99 against fleet size.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::server::{Engine, Served};
use super::sim::{Kind, Outcome, Plan};

/// The request kinds shown with their p50/p99 (the others are printed when they ran).
const MAIN_KINDS: [Kind; 5] = [
    Kind::Prolog,
    Kind::Inventory,
    Kind::Result,
    Kind::CheckIn,
    Kind::Report,
];

/// What one fleet size on one engine gave.
pub(crate) struct Row {
    pub engine: Engine,
    pub plan: Plan,
    pub outcome: Outcome,
    pub database: Option<u64>,
    pub log_lines: usize,
    pub warnings: Vec<String>,
    /// Reconcile passes over the run and their total seconds (`/metrics`).
    pub reconcile: Option<(f64, f64)>,
}

/// Reconcile passes and their total seconds, from the server's `/metrics` text.
pub(crate) fn reconcile_passes(metrics: &str) -> Option<(f64, f64)> {
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|line| line.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    Some((
        value("tessera_reconcile_duration_seconds_count")?,
        value("tessera_reconcile_duration_seconds_sum")?,
    ))
}

impl Row {
    pub(crate) fn of(
        engine: Engine,
        plan: &Plan,
        outcome: Outcome,
        served: &Served,
        metrics: &str,
    ) -> Self {
        let (log_lines, warnings) = served.log_lines();
        Self {
            engine,
            plan: plan.clone(),
            outcome,
            database: served.database_size(),
            log_lines,
            warnings,
            reconcile: reconcile_passes(metrics),
        }
    }

    fn size(&self) -> usize {
        self.plan.ocs + self.plan.native
    }

    fn last_rss(&self) -> u64 {
        self.outcome.samples.last().map_or(0, |s| s.rss)
    }

    fn peak(&self) -> u64 {
        self.outcome
            .samples
            .iter()
            .map(|s| s.hwm)
            .max()
            .unwrap_or(0)
    }

    /// Resident memory at the start and end of the steady hours (the flatness check).
    fn steady_span(&self) -> Option<(u64, u64)> {
        let steady: Vec<_> = self
            .outcome
            .samples
            .iter()
            .filter(|s| s.phase.starts_with("steady"))
            .collect();
        Some((steady.first()?.rss, steady.last()?.rss))
    }

    /// Server CPU seconds per 1,000 contacts over the whole run.
    fn cpu_per_thousand(&self) -> Option<f64> {
        let cpu: f64 = self
            .outcome
            .hours
            .iter()
            .map(|h| h.server_cpu)
            .sum::<Option<f64>>()?;
        let contacts: usize = self.outcome.hours.iter().map(|h| h.contacts).sum();
        Some(cpu * 1000.0 / contacts.max(1) as f64)
    }

    pub(crate) fn render(&self) -> String {
        let o = &self.outcome;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### {} computers on {} ({} OCS + {} native), one hour in {:.0} s\n",
            self.size(),
            self.engine.name(),
            self.plan.ocs,
            self.plan.native,
            self.plan.hour.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "registered (targeted by the wave): {} of {}; wave results filed: {} (agents got 200 for {}); request errors: {}; inventory {} bytes zlib",
            o.registered,
            self.size(),
            o.wave_successes,
            o.wave_reported,
            o.timings.errors.load(std::sync::atomic::Ordering::Relaxed),
            o.inventory_bytes
        );
        for error in o.timings.first_errors.lock().expect("errors").iter() {
            let _ = writeln!(out, "  error: {error}");
        }
        let _ = writeln!(
            out,
            "resident: {} at the end, peak {}; database {}; server log {} lines{}",
            mib(self.last_rss()),
            mib(self.peak()),
            self.database.map_or("-".to_owned(), mib),
            self.log_lines,
            match self.steady_span() {
                Some((first, last)) =>
                    format!("; over the steady hours {} -> {}", mib(first), mib(last)),
                None => String::new(),
            }
        );
        if let Some((passes, seconds)) = self.reconcile {
            let _ = writeln!(
                out,
                "reconcile: {passes:.0} passes, {:.1} ms each on average, {seconds:.1} s in all",
                1e3 * seconds / passes.max(1.0)
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "  server: {warning}");
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| hour | contacts | requests | req/s | server CPU s / 1,000 contacts | other processes' CPU | latest contact behind | PROLOG p50 / p99 ms | check-in p50 / p99 ms |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for h in &o.hours {
            let ms = |(_, p50, p99): (usize, Duration, Duration)| {
                format!(
                    "{:.2} / {:.2}",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {} | {:.1} s | {} | {} |",
                h.name,
                h.contacts,
                h.requests,
                h.requests as f64 / h.took.as_secs_f64(),
                h.server_cpu.map_or("-".to_owned(), |c| format!(
                    "{:.2}",
                    c * 1000.0 / h.contacts.max(1) as f64
                )),
                h.other_cpu.map_or("-".to_owned(), |c| format!(
                    "{:.0}% of a core",
                    100.0 * c / h.took.as_secs_f64()
                )),
                h.max_lag.as_secs_f64(),
                ms(h.prolog),
                ms(h.check_in)
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| request | count | p50 ms | p99 ms |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for kind in Kind::ALL {
            let (count, p50, p99) = o.timings.summary(kind);
            if count == 0 && !MAIN_KINDS.contains(&kind) {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {count} | {:.2} | {:.2} |",
                kind.name(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        let _ = writeln!(out);
        let _ = write!(out, "memory (VmRSS MiB) through the run:");
        let mut phase = "";
        for s in &o.samples {
            if s.phase != phase {
                phase = &s.phase;
                let _ = write!(out, "\n  {phase}:");
            }
            let _ = write!(out, " {:.0}", s.rss as f64 / f64::from(1 << 20));
        }
        let _ = writeln!(out);
        out
    }
}

/// The CSV's header: one line per engine and fleet size.
const CSV_HEADER: &str = "engine,computers,ocs,native,hour_seconds,rss_end_bytes,rss_peak_bytes,database_bytes,cpu_seconds_per_1000_contacts,prolog_p50_ms,prolog_p99_ms,inventory_p99_ms,result_p99_ms,checkin_p99_ms,report_p99_ms,errors";

/// Writes `fleet.csv` and `fleet.svg` into `dir` and says where. Lines of an earlier run
/// for other engines or sizes are kept, so runs of one size at a time add up to one plot.
pub(crate) fn write_files(dir: &Path, rows: &[Row]) {
    std::fs::create_dir_all(dir).expect("create the output directory");
    let csv_path = dir.join("fleet.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&csv_path)
        .ok()
        .filter(|text| text.lines().next() == Some(CSV_HEADER))
        .map(|text| text.lines().skip(1).map(str::to_owned).collect())
        .unwrap_or_default();
    for row in rows {
        let key = format!("{},{},", row.engine.name(), row.size());
        lines.retain(|line| !line.starts_with(&key));
        lines.push(row.csv());
    }
    let key = |line: &String| {
        let mut fields = line.split(',');
        let engine = fields.next().unwrap_or_default().to_owned();
        let size: usize = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (engine, size)
    };
    lines.sort_by_key(key);
    let csv = std::iter::once(CSV_HEADER.to_owned())
        .chain(lines.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(&csv_path, csv).expect("write the CSV");
    let points: Vec<Point> = lines.iter().filter_map(|line| Point::parse(line)).collect();
    let svg_path = dir.join("fleet.svg");
    std::fs::write(&svg_path, svg(&points)).expect("write the SVG");
    println!(
        "\nfleet bench: wrote {} and {}",
        csv_path.display(),
        svg_path.display()
    );
}

impl Row {
    fn csv(&self) -> String {
        let p = |kind| {
            let (_, p50, p99) = self.outcome.timings.summary(kind);
            (p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3)
        };
        format!(
            "{},{},{},{},{:.0},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            self.engine.name(),
            self.size(),
            self.plan.ocs,
            self.plan.native,
            self.plan.hour.as_secs_f64(),
            self.last_rss(),
            self.peak(),
            self.database.unwrap_or(0),
            self.cpu_per_thousand()
                .map_or(String::new(), |c| format!("{c:.3}")),
            p(Kind::Prolog).0,
            p(Kind::Prolog).1,
            p(Kind::Inventory).1,
            p(Kind::Result).1,
            p(Kind::CheckIn).1,
            p(Kind::Report).1,
            self.outcome
                .timings
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// What the plot shows of one CSV line.
struct Point {
    engine: String,
    size: f64,
    peak_mib: f64,
    prolog_p99_ms: f64,
}

impl Point {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split(',').collect();
        Some(Self {
            engine: (*fields.first()?).to_owned(),
            size: fields.get(1)?.parse().ok()?,
            peak_mib: fields.get(6)?.parse::<f64>().ok()? / f64::from(1 << 20),
            prolog_p99_ms: fields.get(10)?.parse().ok()?,
        })
    }
}

/// A panel of the plot: its title and the value it shows of a point.
type Panel = (&'static str, fn(&Point) -> f64);

/// Two panels side by side: peak resident memory (MiB) and PROLOG p99 (ms) against fleet
/// size on a logarithmic axis, one line per engine.
fn svg(rows: &[Point]) -> String {
    const W: f64 = 360.0;
    const H: f64 = 240.0;
    const M: f64 = 48.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * W,
        H + 20.0
    );
    let sizes: Vec<f64> = rows.iter().map(|r| r.size).collect();
    let (lo, hi) = (
        sizes.iter().copied().fold(f64::MAX, f64::min).max(1.0),
        sizes.iter().copied().fold(0.0, f64::max).max(10.0),
    );
    let (lo, hi) = if hi / lo < 10.0 {
        (lo, lo * 10.0)
    } else {
        (lo, hi)
    };
    let panels: [Panel; 2] = [
        ("peak resident memory (MiB)", |p| p.peak_mib),
        ("PROLOG p99 (ms)", |p| p.prolog_p99_ms),
    ];
    let colours = ["#1f77b4", "#d62728"];
    for (panel, (title, value)) in panels.iter().enumerate() {
        let x0 = panel as f64 * W;
        let top = rows.iter().map(value).fold(0.0, f64::max).max(1e-3) * 1.15;
        let px = |size: f64| x0 + M + (size.ln() - lo.ln()) / (hi.ln() - lo.ln()) * (W - M - 16.0);
        let py = |v: f64| H - M + 8.0 - v / top * (H - M - 16.0);
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"14\">{title}</text>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            x0 + M,
            x0 + M,
            py(0.0),
            x0 + W - 16.0,
            py(0.0),
            x0 + M,
            py(0.0),
            x0 + M,
            py(top)
        );
        for tick in 0..=4 {
            let v = top * f64::from(tick) / 4.0;
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>",
                x0 + M - 4.0,
                py(v) + 4.0
            );
        }
        let mut size = 1.0;
        while size <= hi * 1.01 {
            if size >= lo * 0.99 {
                let _ = writeln!(
                    out,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    px(size),
                    py(0.0) + 14.0,
                    thousands(size as usize)
                );
            }
            size *= 10.0;
        }
        for (n, engine) in [Engine::Sqlite, Engine::Postgres].into_iter().enumerate() {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.engine == engine.name())
                .map(|r| (px(r.size), py(value(r))))
                .collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                colours[n],
                line.join(" ")
            );
            for (x, y) in &points {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"/>",
                    colours[n]
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
                x0 + W - 110.0,
                30.0 + 14.0 * n as f64,
                colours[n],
                engine.name()
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">computers</text>",
            x0 + W / 2.0,
            H + 14.0
        );
    }
    out.push_str("</svg>\n");
    out
}

fn thousands(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}
