//! The `shmflow` command: publish, subscribe to, list, inspect and clean up rings, benchmark
//! them, and run the demo pipeline. See `shmflow --help`; the subcommands live in `src/cli/`.

#[cfg(not(loom))]
mod cli;

fn main() {
    // Under `--cfg loom` only the ring protocol is compiled (for tests/loom.rs).
    #[cfg(not(loom))]
    std::process::exit(cli::main());
}
