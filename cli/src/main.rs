//! The `shmflow` command: publish, subscribe to, list, inspect and clean up rings, benchmark
//! them, and run the demo pipeline. See `shmflow --help`.
//!
//! This crate is the command only: the library (`shmflow`, the workspace's root package) has
//! none of clap, md-5 or serde_json, nor the benchmark harness.
//!
//! Each subcommand lives in its own module, which defines its clap `Args` struct, its help
//! text (with an example) and a `run_*` function returning a `CliResult`:
//!
//! - [`pubsub`]: `pub` (raw frames from stdin into a new ring) and `sub` (frames, checksums
//!   or figures from a ring to stdout);
//! - [`admin`]: `ls`, `inspect`, `rm`, `gc`;
//! - [`top`]: `top`, the live view of every ring and pool (ratatui), and its `--once` snapshot;
//! - [`mod@bench`]: `bench` (the benchmark harness in [`harness`], printed as a table or JSON,
//!   drawn as SVG by [`plot`]);
//! - [`demo`]: `demo`, the main job.
//!
//! To add a subcommand (e.g. `bench`, `demo`): write `cli/src/<name>.rs` with its `Args` and
//! `run`, declare the module below, add a variant to [`Command`] and a line to the `match` in
//! [`run`]. Errors are returned as `Failure`s (`common.rs`), never printed or panicked: [`run`] prints
//! them as one line, `shmflow: <message>`, and exits non-zero.
//!
//! Exit codes: 0 success, 1 failure, 2 bad command line, 3 `sub --timeout` expired.

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod admin;
mod bench;
mod common;
mod demo;
mod harness;
mod plot;
mod pubsub;
mod top;

const ABOUT: &str = "Zero-copy rings of array frames in shared memory";

const LONG_ABOUT: &str = "\
Zero-copy rings of array frames in POSIX shared memory (/dev/shm/shmflow.*).

`pub` publishes raw frames from stdin into a ring, `sub` reads them back (raw, one MD5 line \
per frame, or throughput figures); `ls`, `inspect`, `rm` and `gc` look after the segments.

Output is plain and parseable (tab-separated, exact numbers) when stdout is not a terminal. \
Errors are one line on stderr, `shmflow: <message>`. Exit codes: 0 success, 1 failure, \
2 bad command line, 3 `sub --timeout` expired.";

const EXAMPLES: &str = "\
Examples:
  ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | shmflow pub cam --shape 1080,1920,3 --wait-readers 1
  shmflow sub cam --md5
  shmflow ls
  shmflow gc --dry-run";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "shmflow",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish raw frames from stdin into a new ring
    #[command(long_about = pubsub::PUB_ABOUT, after_help = pubsub::PUB_EXAMPLES)]
    Pub(pubsub::PubArgs),
    /// Read frames from a ring: raw bytes, one MD5 line per frame, or figures
    #[command(long_about = pubsub::SUB_ABOUT, after_help = pubsub::SUB_EXAMPLES)]
    Sub(pubsub::SubArgs),
    /// List shmflow segments
    #[command(long_about = admin::LS_ABOUT, after_help = admin::LS_EXAMPLES)]
    Ls(admin::LsArgs),
    /// Show a ring's header and state
    #[command(long_about = admin::INSPECT_ABOUT, after_help = admin::INSPECT_EXAMPLES)]
    Inspect(admin::InspectArgs),
    /// Remove rings by name
    #[command(long_about = admin::RM_ABOUT, after_help = admin::RM_EXAMPLES)]
    Rm(admin::RmArgs),
    /// Remove stale segments (whose creator is dead)
    #[command(long_about = admin::GC_ABOUT, after_help = admin::GC_EXAMPLES)]
    Gc(admin::GcArgs),
    /// Measure rings against pipes and sockets, side by side
    #[command(long_about = bench::BENCH_ABOUT, after_help = bench::BENCH_EXAMPLES)]
    Bench(bench::BenchArgs),
    /// Watch every ring and worker pool live (or print one snapshot)
    #[command(long_about = top::TOP_ABOUT, after_help = top::TOP_EXAMPLES)]
    Top(top::TopArgs),
    /// Run the demo pipeline: camera, worker pool, recorder, preview, with live figures
    #[command(long_about = demo::DEMO_ABOUT, after_help = demo::DEMO_EXAMPLES)]
    Demo(demo::DemoArgs),
}

fn main() {
    std::process::exit(run());
}

/// Runs the command line and returns the process's exit code.
fn run() -> i32 {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Pub(a) => pubsub::run_pub(a),
        Command::Sub(a) => pubsub::run_sub(a),
        Command::Ls(a) => admin::run_ls(a),
        Command::Inspect(a) => admin::run_inspect(a),
        Command::Rm(a) => admin::run_rm(a),
        Command::Gc(a) => admin::run_gc(a),
        Command::Bench(a) => bench::run_bench(a),
        Command::Demo(a) => demo::run_demo(a),
        Command::Top(a) => top::run_top(a),
    };
    match result {
        Ok(()) => 0,
        Err(f) => {
            if let Some(m) = f.message {
                eprintln!("shmflow: {}", common::one_line(&m));
            }
            f.code
        }
    }
}

/// Help and version go to stdout as clap prints them; every other clap error becomes one line.
fn usage_error(e: clap::Error) -> i32 {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            common::EXIT_USAGE
        }
        _ => {
            // clap renders "error: <what>\n<details>\n\nUsage: ...\n\nFor more information...":
            // keep the first paragraph, on one line.
            let text = e.render().to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let first = common::one_line(first);
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("shmflow: {first} (see --help)");
            common::EXIT_USAGE
        }
    }
}

/// A panic (a bug) is reported on one line, without a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let (msg, location) = shmflow::process::panic_text(info);
        let at = if location.is_empty() {
            String::new()
        } else {
            format!(" at {location}")
        };
        eprintln!(
            "shmflow: internal error: {}{at} (please report this bug)",
            common::one_line(&msg)
        );
    }));
}
