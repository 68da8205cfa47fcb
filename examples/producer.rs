//! Publishes frames on the ring `shmflow-example`: the publishing half of a publish/subscribe
//! pair (run `consumer` in another terminal).
//!
//! ```text
//! cargo run --example producer [-- --frames N] [--fps F]     # default: 300 frames at 30 fps
//! cargo run --example consumer                                # in another terminal
//! ```
//!
//! The producer creates a broadcast, drop-oldest ring of 480×640×3 `u8` frames (a live
//! stream: it never waits for a slow consumer; consumers are told how many frames they missed),
//! fills each frame in place and tags it with a frame counter. It removes the ring when it
//! ends, also on Ctrl-C. Consumers then get `Disconnected`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shmflow::{Backpressure, CreateError, Mode, Ring};

const NAME: &str = "shmflow-example";
const SHAPE: [usize; 3] = [480, 640, 3];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn create() -> Result<Ring<u8>, CreateError> {
    Ring::<u8>::create(NAME)
        .shape(SHAPE)
        .slots(4)
        .mode(Mode::Broadcast(Backpressure::DropOldest))
        .build()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut frames = 300u64;
    let mut fps = 30.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--frames", Some(v)) => frames = v.parse()?,
            ("--fps", Some(v)) => fps = v.parse()?,
            _ => return Err("usage: producer [--frames N] [--fps F]".into()),
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }

    let ring = match create() {
        // Left behind by a producer that was killed? Then remove it and start afresh.
        Err(CreateError::AlreadyExists { .. })
            if Ring::<u8>::open(NAME).is_ok_and(|r| !r.info().creator_alive) =>
        {
            Ring::<u8>::remove(NAME)?;
            create()?
        }
        r => r?,
    };
    let mut writer = ring.writer()?;
    println!("producer: publishing {frames} frames of {SHAPE:?} u8 on {NAME:?} at {fps} fps");

    let period = Duration::from_secs_f64(1.0 / fps);
    let start = Instant::now();
    for counter in 0..frames {
        if STOP.load(Ordering::Relaxed) {
            println!("producer: interrupted");
            break;
        }
        // Drop-oldest: reserve never waits for consumers.
        let mut slot = writer.reserve()?;
        // A diagonal gradient that moves with the counter: row y holds (y + counter) % 256.
        for (y, mut row) in slot.view_mut().outer_iter_mut().enumerate() {
            row.fill(((y as u64 + counter) % 256) as u8);
        }
        slot.set_tag(counter);
        let seq = slot.commit();
        println!("producer: seq {seq} tag {counter}");
        // Pace the stream: frame n goes out at start + n * period.
        let next = start + period.mul_f64((counter + 1) as f64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Dropping the writer disconnects the consumers; dropping the ring removes it.
    Ok(())
}
