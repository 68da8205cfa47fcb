//! `shmflow bench`: rings against pipes and sockets, measured side by side in one run.

use std::io::IsTerminal;

use crate::harness::{self as bench, BenchOpts, BenchResult};
use clap::Args;

use super::common::{CliResult, Failure};

pub const BENCH_ABOUT: &str = "\
Measures, in one run and one process tree, 1080p and 4K u8 frames through rings (broadcast with \
1 and 2 readers, queue with 2 readers), a pipe (default size and 1 MiB), a Unix stream socket, \
and the two pipeline-limit stages (writer alone, reader alone); then 64-byte round trips (ring \
with default waiting, ring busy-polling, pipe) and the worker pool (1,000,000 trivial tasks, one \
apply_async round trip, 1080p frames through a frame pool with 1 and 2 workers).

The writer fills every byte and the reader checks every byte of every frame. Each figure is \
repeated (--runs, default 5) and reported as median with min-max, with each transport's ratio \
to the pipe and the ring's ratio to the pipeline limit (the slower of the two stages).

--json prints {\"machine\": {...}, \"results\": [{\"scenario\", \"transport\", \"unit\", \
\"median\", \"min\", \"max\", \"runs\"}, ...]} (see the README for the names).";

pub const BENCH_EXAMPLES: &str = "\
Examples:
  shmflow bench --quick
  shmflow bench --runs 7 --cpus 0,1
  shmflow bench --json > bench.json
  shmflow bench --quick --plot bench.svg
  shmflow bench --soak 10            # ten minutes of frames, readers attaching and detaching";

/// Arguments of `shmflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run (under 30 s): 3 runs, fewer frames and tasks
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of the table
    #[arg(long)]
    json: bool,
    /// Repetitions of each figure
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Frames per 1080p run (4K runs use a quarter)
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Pin the writer to CPU A and readers to CPU B
    #[arg(long, value_name = "A,B", value_parser = parse_cpus)]
    cpus: Option<(usize, usize)>,
    /// Skip the worker-pool scenarios
    #[arg(long)]
    no_pool: bool,
    /// Also draw the figures as an SVG chart into FILE (frames/s per transport with min-max
    /// whiskers and the pipeline limit; round trips on a log scale)
    #[arg(long, value_name = "FILE.svg", conflicts_with = "soak")]
    plot: Option<std::path::PathBuf>,
    /// Instead of the figures: stream frames through three rings for MINUTES (fractions
    /// allowed) with readers attaching and detaching, then check every frame's ledger
    #[arg(long, value_name = "MINUTES", value_parser = parse_minutes)]
    soak: Option<f64>,
    /// Bytes per frame in the soak (a multiple of 8)
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024, requires = "soak")]
    frame_bytes: usize,
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 7.0 * 24.0 * 60.0 => Ok(m),
        _ => Err(format!(
            "expected a number of minutes like 10 or 0.5, got {s:?}"
        )),
    }
}

fn parse_cpus(s: &str) -> Result<(usize, usize), String> {
    let v: Vec<&str> = s.split(',').collect();
    match v.as_slice() {
        [a, b] => Ok((
            a.trim().parse().map_err(|_| format!("bad CPU id {a:?}"))?,
            b.trim().parse().map_err(|_| format!("bad CPU id {b:?}"))?,
        )),
        _ => Err(format!("expected two CPU ids like 0,1, got {s:?}")),
    }
}

pub fn run_bench(a: BenchArgs) -> CliResult {
    if let Some(minutes) = a.soak {
        return run_soak(minutes, a.frame_bytes, a.json);
    }
    let mut o = if a.quick {
        BenchOpts::quick()
    } else {
        BenchOpts::full()
    };
    if let Some(r) = a.runs {
        o.runs = r.max(1);
    }
    if let Some(f) = a.frames {
        o.frames = f.max(1);
    }
    o.cpus = a.cpus;
    o.pool = !a.no_pool;
    // A plot file that cannot be written is found before the run, not after it.
    if let Some(path) = &a.plot {
        std::fs::File::create(path)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    }
    let tty = std::io::stderr().is_terminal();
    let results = bench::run(&o, |what| {
        if tty {
            eprint!("\r\x1b[2Kmeasuring {what} ...");
        }
    })
    .map_err(|e| Failure::new(format!("bench failed: {e}")))?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    if a.json {
        let doc = serde_json::json!({ "machine": bench::machine(), "results": results });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Failure::new(e.to_string()))?
        );
    } else {
        print_table(&results);
    }
    // After the figures are out: a plot that cannot be written loses nothing of the run.
    if let Some(path) = &a.plot {
        crate::plot::write_svg(path, &results, &bench::machine(), &crate::plot::today())
            .map_err(Failure::new)?;
    }
    Ok(())
}

fn run_soak(minutes: f64, frame_bytes: usize, json: bool) -> CliResult {
    let mut o = bench::SoakOpts::new(std::time::Duration::from_secs_f64(minutes * 60.0));
    o.frame_bytes = frame_bytes;
    let tty = std::io::stderr().is_terminal();
    let report = bench::soak(&o, |line| {
        if tty {
            eprint!("\r\x1b[2K{line}");
        }
    })
    .map_err(|e| Failure::new(format!("soak failed: {e}")))?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    if json {
        let doc = serde_json::json!({ "machine": bench::machine(), "soak": report });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Failure::new(e.to_string()))?
        );
    } else {
        print_soak(&report);
    }
    if report.ok() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "soak found {} problem(s): {}",
            report.problems.len(),
            report.problems.join("; ")
        )))
    }
}

fn print_soak(r: &bench::SoakReport) {
    println!(
        "shmflow soak: {:.0} s, {} B frames, every word of every frame checked",
        r.seconds, r.frame_bytes
    );
    println!();
    println!(
        "{:<12} {:>10}  {:<44} {:>9} {:>12} {:>9}",
        "ring", "written", "steady readers: read (missed)", "attaches", "churn read", "dropped"
    );
    for l in &r.rings {
        let steady: Vec<String> = l
            .steady
            .iter()
            .map(|s| {
                if s.missed > 0 {
                    format!("{} ({})", s.frames, s.missed)
                } else {
                    s.frames.to_string()
                }
            })
            .collect();
        println!(
            "{:<12} {:>10}  {:<44} {:>9} {:>12} {:>9}",
            l.ring,
            l.written,
            steady.join(", "),
            l.churn_attaches,
            l.churn.frames,
            l.dropped
        );
    }
    println!();
    println!(
        "{:<24} {:>14} {:>14} {:>14} {:>16} {:>14}",
        "process", "RSS start KiB", "RSS end KiB", "RSS max KiB", "anon start KiB", "anon end KiB"
    );
    for m in &r.rss {
        println!(
            "{:<24} {:>14} {:>14} {:>14} {:>16} {:>14}",
            m.process,
            m.rss_start_kib,
            m.rss_end_kib,
            m.rss_max_kib,
            m.anon_start_kib,
            m.anon_end_kib
        );
    }
    println!();
    if r.ok() {
        println!("ledger: ok (no frame lost in lossless modes, none torn, queue frames each read once, memory stable)");
    } else {
        for p in &r.problems {
            println!("PROBLEM: {p}");
        }
    }
}

fn print_table(results: &[BenchResult]) {
    let m = bench::machine();
    println!(
        "shmflow bench: {} CPUs ({}), kernel {}, {} runs per figure, medians with min-max",
        m.cpus,
        if m.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            &m.cpu_model
        },
        m.kernel,
        results.first().map_or(0, |r| r.runs)
    );
    let mut last = "";
    for r in results {
        if r.scenario != last {
            println!();
            println!(
                "{:<18} {:<14} {:>12} {:>10}  {:<22} {:>9} {:>9}",
                r.scenario, "transport", "median", "unit", "min - max", "vs pipe", "vs limit"
            );
            last = &r.scenario;
        }
        let pipe = bench::baseline(results, &r.scenario);
        let vs_pipe = match (pipe, r.unit.as_str()) {
            (Some(p), "frames/s") => format!("{:.1}x", r.median / p.median),
            (Some(p), "us") => format!("{:.1}x", p.median / r.median),
            _ => String::new(),
        };
        let vs_limit = match bench::limit(results, &r.scenario) {
            Some(l) if r.transport.starts_with("ring") => format!("{:.2}", r.median / l),
            _ => String::new(),
        };
        println!(
            "{:<18} {:<14} {:>12} {:>10}  {:<22} {:>9} {:>9}",
            "",
            r.transport,
            fmt(r.median),
            r.unit,
            format!("{} - {}", fmt(r.min), fmt(r.max)),
            vs_pipe,
            vs_limit
        );
    }
    println!();
    println!("vs pipe: throughput ratio (frames) or speed-up (latency) against the pipe in the same run.");
    println!("vs limit: the ring's frames/s over the pipeline limit (slower of writer alone, reader alone).");
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}
