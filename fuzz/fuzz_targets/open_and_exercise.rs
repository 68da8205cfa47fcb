//! libFuzzer target: arbitrary bytes as a shmflow segment (raw file, a real ring with patched
//! state, or bit flips in a live ring; the first byte chooses, see `shmflow::__fuzz`). Any
//! panic or abort is a finding; so is a run longer than libFuzzer's `-timeout`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shmflow::__fuzz::open_and_exercise(data);
});
