#!/usr/bin/env bash
# Coverage-guided fuzzing of open_and_exercise on STABLE Rust, without cargo-fuzz.
#
#   fuzz/stable.sh [SECONDS] [libFuzzer options...]     (default: 60 s)
#
# cargo-fuzz needs nightly only for -Zsanitizer=address. The coverage instrumentation libFuzzer
# needs (SanitizerCoverage) is reachable on stable through -C passes and -C llvm-args, which is
# what cargo-fuzz passes too. Building for an explicit --target keeps the flags off build
# scripts. Without AddressSanitizer an out-of-bounds access is found only if it faults (the
# harness itself checks that every view lies inside one slot).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs=${1:-60}
shift || true
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$host" --bin open_and_exercise

mkdir -p corpus/open_and_exercise artifacts/open_and_exercise
# Seeds for the three modes (raw file, patched state of a real ring, bit flips of a live ring).
printf '\x00' >corpus/open_and_exercise/seed-raw
printf '\x01\x00\x01\x03\x03\x00\x02\x00\x00\x31' >corpus/open_and_exercise/seed-state
printf '\x02\x02\x01\x03\x04\x00\x03\x01\x00\x51\x10\x00\x00\x00' >corpus/open_and_exercise/seed-flips

exec "target/$host/release/open_and_exercise" \
    -timeout=10 -rss_limit_mb=4096 -max_len=512 -len_control=0 -max_total_time="$secs" \
    -artifact_prefix=artifacts/open_and_exercise/ "$@" corpus/open_and_exercise
