//! `shmflow bench`: rings against pipes and sockets, measured side by side in one run.

use std::io::IsTerminal;

use clap::Args;
use shmflow::bench::{self, BenchOpts, BenchResult};

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
  shmflow bench --json > bench.json";

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
    Ok(())
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
