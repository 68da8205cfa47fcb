//! Subscribes to the ring `shmflow-example` and prints one line per frame: the subscribing
//! half of a publish/subscribe pair (start `producer` before or after it).
//!
//! ```text
//! cargo run --example consumer [-- --wait SECONDS]      # default: wait 30 s for the ring
//! ```
//!
//! It opens the ring by name, attaches a reader and prints each frame's sequence number, tag
//! and mean value, read in place from shared memory. It exits when the producer is gone
//! (`Disconnected`).

use std::time::{Duration, Instant};

use shmflow::{OpenError, RecvError, Ring};

const NAME: &str = "shmflow-example";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut wait = 30.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--wait", Some(v)) => wait = v.parse()?,
            _ => return Err("usage: consumer [--wait SECONDS]".into()),
        }
    }

    // Wait for a producer to create the ring.
    let started = Instant::now();
    let ring = loop {
        match Ring::<u8>::open(NAME) {
            Ok(ring) => break ring,
            Err(OpenError::NotFound { .. } | OpenError::NotReady { .. })
                if started.elapsed().as_secs_f64() < wait =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut reader = ring.reader()?;
    println!(
        "consumer: subscribed to {NAME:?} ({:?} u8)",
        ring.info().max_shape
    );

    let mut frames = 0u64;
    loop {
        match reader.recv() {
            Ok(frame) => {
                let sum: u64 = frame.iter().map(|&v| u64::from(v)).sum();
                let mean = sum as f64 / frame.len() as f64;
                let missed = if frame.missed() > 0 {
                    format!(" (missed {})", frame.missed())
                } else {
                    String::new()
                };
                println!(
                    "consumer: seq {} tag {} mean {mean:.2}{missed}",
                    frame.seq(),
                    frame.tag()
                );
                frames += 1;
            }
            Err(RecvError::Disconnected) => {
                println!("consumer: producer disconnected after {frames} frames");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}
