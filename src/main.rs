//! The `shmflow` command: publish, subscribe to, list, inspect and clean up rings.
//! See `shmflow --help`; the subcommands live in `src/cli/`.

mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
