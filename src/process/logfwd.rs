//! Forwards a child's `log` records to its parent, which re-emits them through its own logger
//! with the child's name in front.

use std::sync::{Arc, Mutex};

use log::{Level, LevelFilter, Log, Metadata, Record};

use super::control::RawChannel;
use super::wire::{encode, up, LogRecord};

struct Forwarder {
    tx: Arc<Mutex<RawChannel>>,
}

impl Log for Forwarder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let rec = LogRecord {
            level: record.level() as u8,
            target: record.target().to_owned(),
            message: record.args().to_string(),
        };
        if let Ok(mut t) = self.tx.lock() {
            let _ = t.send_frame(up::LOG, &encode(&rec));
        }
    }

    fn flush(&self) {}
}

/// In a child: makes `log` records travel to the parent. If the process already has a logger
/// (a forked child inherits the parent's), that one stays and writes directly.
pub(crate) fn install(tx: Arc<Mutex<RawChannel>>, _name: &str) {
    if log::set_boxed_logger(Box::new(Forwarder { tx })).is_ok() {
        // A forked child inherited the parent's max level; a re-executed one is told it.
        if let Some(level) = std::env::var(super::spawn::ENV_LOG)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let filter = [
                LevelFilter::Off,
                LevelFilter::Error,
                LevelFilter::Warn,
                LevelFilter::Info,
                LevelFilter::Debug,
                LevelFilter::Trace,
            ];
            log::set_max_level(filter[level.min(5)]);
        }
    }
}

/// In the parent: re-emits a child's record.
pub(crate) fn emit(name: &str, level: u8, target: &str, message: &str) {
    let level = match level {
        1 => Level::Error,
        2 => Level::Warn,
        3 => Level::Info,
        4 => Level::Debug,
        _ => Level::Trace,
    };
    if level > log::max_level() {
        return;
    }
    log::logger().log(
        &Record::builder()
            .level(level)
            .target(target)
            .args(format_args!("[{name}] {message}"))
            .build(),
    );
}
