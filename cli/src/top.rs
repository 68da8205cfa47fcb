//! `shmflow top`: every ring and worker pool on the machine, live (ratatui), or one snapshot
//! (`--once`, `--json`).
//!
//! Rates come from the counters in the segments, read twice an interval apart
//! ([`shmflow::inspect`] for rings, [`PoolSnapshot::read`] for pools): `top` attaches to
//! nothing and writes nothing, so it never changes what it watches.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use serde_json::{json, Value};
use shmflow::process::PoolSnapshot;
use shmflow::{Mode, PeerStatus, RingInfo, RingStatus};

use super::common::{
    describe, fmt_shape, output_error, parse_seconds, CliResult, Failure, Out, SegmentKind,
    EXIT_INTERRUPTED,
};

pub const TOP_ABOUT: &str = "\
A live view of every ring and worker pool on the machine, refreshed every --interval: per ring \
its mode, dtype, shape and slots, its writers (pid, alive or dead, frames/s, bytes/s) and \
readers (backlog, frames held, missed frames, frames/s); per pool its workers (pid, busy %, \
tasks/s, restarts; busy is the share of the interval spent inside tasks, which for a frame \
pool includes waiting for the task's frame).

A reader's backlog is the frames committed since its cursor: for a lossless reader that cursor \
is the oldest frame it holds (the writer cannot reuse those slots), for a drop-oldest or lossy \
reader the next frame it reads.

Rates are differences of the counters in the segments, read twice: top attaches to nothing and \
writes nothing. Bytes/s count whole slots (frames/s x slot size), an upper bound when frames \
are smaller than the ring's shape.

Keys: q, Esc or Ctrl-C quit; s changes the sort (name, frames/s, backlog); / types a filter on \
names (Enter keeps it, Esc clears it); Up/Down scroll.

--once prints one snapshot (two samples --interval apart) and exits; with --json it is one JSON \
object: {\"interval_s\", \"rings\": [{\"name\", \"mode\", \"dtype\", \"shape\", \"slots\", \
\"slot_bytes\", \"write_seq\", \"backlog\", \"frames_per_s\", \"writer_died\", \"writers\": \
[...], \"readers\": [...]}], \"pools\": [{\"name\", \"owner\", \"owner_alive\", \"interval_s\", \
\"workers\": [...]}], \"unreadable\": [{\"name\", \"error\"}]}. Every rate is (counter - \
counter_before) / interval_s; a rate is null for a peer that was not there at the first sample.";

pub const TOP_EXAMPLES: &str = "\
Examples:
  shmflow top
  shmflow top --filter cam --sort rate
  shmflow top --once
  shmflow top --once --json | jq '.rings[] | {name, frames_per_s}'";

/// Arguments of `shmflow top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one snapshot (two samples INTERVAL apart) instead of the live view
    #[arg(long)]
    once: bool,
    /// With --once: print JSON
    #[arg(long, requires = "once")]
    json: bool,
    /// Seconds between samples (refresh period)
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval)]
    interval: Duration,
    /// Only rings and pools whose name contains TEXT
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Order of the rings
    #[arg(long, value_enum, default_value_t = SortKey::Name)]
    sort: SortKey,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    if d < Duration::from_millis(50) || d > Duration::from_secs(3600) {
        return Err(format!(
            "expected an interval between 0.05 and 3600 seconds, got {s:?}"
        ));
    }
    Ok(d)
}

/// Order of the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SortKey {
    /// By name
    Name,
    /// Busiest first (frames/s)
    Rate,
    /// Largest backlog first
    Backlog,
}

impl SortKey {
    fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::Rate,
            SortKey::Rate => SortKey::Backlog,
            SortKey::Backlog => SortKey::Name,
        }
    }
    fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Rate => "frames/s",
            SortKey::Backlog => "backlog",
        }
    }
}

// ---------------------------------------------------------------- samples and rates

/// Everything `top` reads at one instant.
#[derive(Clone)]
struct Sample {
    at: Instant,
    rings: Vec<(RingInfo, RingStatus)>,
    pools: Vec<PoolSnapshot>,
    unreadable: Vec<(String, String)>,
}

fn sample() -> CliResult<Sample> {
    let segments = shmflow::segments::list()
        .map_err(|e| Failure::new(format!("cannot list {}: {e}", super::common::SHM_DIR)))?;
    let at = Instant::now();
    let mut s = Sample {
        at,
        rings: Vec::new(),
        pools: Vec::new(),
        unreadable: Vec::new(),
    };
    for seg in segments {
        match seg.kind {
            SegmentKind::Ring(r) => s.rings.push(*r),
            SegmentKind::PoolStatus { .. } => match PoolSnapshot::read(&seg.name) {
                Ok(p) => s.pools.push(p),
                // Gone between the listing and the read: left out, as `segments::list` does.
                Err(shmflow::OpenError::NotFound { .. }) => {}
                Err(e) => s.unreadable.push((seg.name, describe(&e))),
            },
            SegmentKind::Unreadable(e) => s.unreadable.push((seg.name, describe(&e))),
            _ => {}
        }
    }
    Ok(s)
}

/// A rate between two samples of a counter; `None` without an earlier sample, or when the
/// counter went backwards (a new process behind the same entry).
fn rate(now: u64, before: Option<u64>, secs: f64) -> Option<f64> {
    let before = before?;
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

/// One peer of a ring, with its rates.
struct PeerView {
    peer: PeerStatus,
    frames_before: Option<u64>,
    frames_per_s: Option<f64>,
    missed_per_s: Option<f64>,
    /// Reader: frames committed since its cursor (a lossless reader's cursor is the oldest
    /// frame it holds).
    backlog: u64,
}

struct RingView {
    info: RingInfo,
    status: RingStatus,
    frames_per_s: Option<f64>,
    writers: Vec<PeerView>,
    readers: Vec<PeerView>,
}

struct WorkerView {
    w: shmflow::process::WorkerSample,
    tasks_before: Option<u64>,
    tasks_per_s: Option<f64>,
    busy_percent: Option<f64>,
}

struct PoolView {
    pool: PoolSnapshot,
    secs: f64,
    workers: Vec<WorkerView>,
}

/// What the two samples say, filtered and sorted.
struct View {
    secs: f64,
    rings: Vec<RingView>,
    pools: Vec<PoolView>,
    unreadable: Vec<(String, String)>,
}

fn peers(
    now: &[PeerStatus],
    before: Option<&[PeerStatus]>,
    secs: f64,
    write_seq: u64,
    queue: bool,
    ring_backlog: u64,
) -> Vec<PeerView> {
    // The same entry and pid at both samples is the same peer (a pid reused for the same entry
    // within one interval would only make a rate wrong once).
    let earlier: HashMap<(usize, u32), &PeerStatus> = before
        .unwrap_or_default()
        .iter()
        .map(|p| ((p.index, p.pid), p))
        .collect();
    now.iter()
        .map(|p| {
            let b = earlier.get(&(p.index, p.pid));
            PeerView {
                peer: p.clone(),
                frames_before: b.map(|b| b.frames),
                frames_per_s: rate(p.frames, b.map(|b| b.frames), secs),
                missed_per_s: rate(p.missed, b.map(|b| b.missed), secs),
                backlog: if queue {
                    ring_backlog
                } else {
                    write_seq.saturating_sub(p.cursor)
                },
            }
        })
        .collect()
}

fn view(before: &Sample, now: Sample, filter: Option<&str>, sort: SortKey) -> View {
    let secs = now.at.duration_since(before.at).as_secs_f64();
    let keep = |name: &str| filter.is_none_or(|f| name.contains(f));
    let earlier: HashMap<&str, (u64, &RingStatus)> = before
        .rings
        .iter()
        .map(|(i, s)| (i.name.as_str(), (i.created_unix_ns, s)))
        .collect();
    let mut rings: Vec<RingView> = now
        .rings
        .into_iter()
        .filter(|(i, _)| keep(&i.name))
        .map(|(info, status)| {
            // A ring of the same name but a different creation is another ring.
            let b = earlier
                .get(info.name.as_str())
                .filter(|(created, _)| *created == info.created_unix_ns)
                .map(|(_, s)| *s);
            let queue = info.mode == Mode::Queue;
            let writers = peers(
                &status.writers,
                b.map(|b| b.writers.as_slice()),
                secs,
                status.write_seq,
                queue,
                status.backlog,
            );
            let readers = peers(
                &status.readers,
                b.map(|b| b.readers.as_slice()),
                secs,
                status.write_seq,
                queue,
                status.backlog,
            );
            RingView {
                frames_per_s: rate(status.write_seq, b.map(|b| b.write_seq), secs),
                info,
                status,
                writers,
                readers,
            }
        })
        .collect();
    match sort {
        SortKey::Name => rings.sort_by(|a, b| a.info.name.cmp(&b.info.name)),
        SortKey::Rate => rings.sort_by(|a, b| {
            let r = |v: &RingView| v.frames_per_s.unwrap_or(0.0);
            r(b).total_cmp(&r(a))
                .then_with(|| a.info.name.cmp(&b.info.name))
        }),
        SortKey::Backlog => rings.sort_by(|a, b| {
            b.status
                .backlog
                .cmp(&a.status.backlog)
                .then_with(|| a.info.name.cmp(&b.info.name))
        }),
    }
    let earlier_pools: HashMap<&str, &PoolSnapshot> =
        before.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let pools = now
        .pools
        .into_iter()
        .filter(|p| keep(&p.name))
        .map(|pool| {
            let b = earlier_pools.get(pool.name.as_str()).copied();
            let secs = b.map_or(0.0, |b| {
                pool.sampled_ns.saturating_sub(b.sampled_ns) as f64 / 1e9
            });
            let workers = pool
                .workers
                .iter()
                .map(|w| {
                    // Figures are per process: a replaced worker starts from 0.
                    let bw = b
                        .and_then(|b| b.workers.get(w.id))
                        .filter(|bw| bw.pid == w.pid);
                    let busy = bw.and_then(|bw| {
                        let d = w.working.checked_sub(bw.working)?;
                        (secs > 0.0).then(|| (d.as_secs_f64() / secs * 100.0).clamp(0.0, 100.0))
                    });
                    WorkerView {
                        tasks_before: bw.map(|bw| bw.tasks),
                        tasks_per_s: rate(w.tasks, bw.map(|bw| bw.tasks), secs),
                        busy_percent: busy,
                        w: w.clone(),
                    }
                })
                .collect();
            PoolView {
                pool,
                secs,
                workers,
            }
        })
        .collect();
    View {
        secs,
        rings,
        pools,
        unreadable: now
            .unreadable
            .into_iter()
            .filter(|(n, _)| keep(n))
            .collect(),
    }
}

// ---------------------------------------------------------------- formatting

fn f_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

/// `2.49 GB/s` (decimal units, as network and disk figures are quoted).
fn f_bytes_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 1e9 => format!("{:.2} GB/s", r / 1e9),
        Some(r) if r >= 1e6 => format!("{:.1} MB/s", r / 1e6),
        Some(r) if r >= 1e3 => format!("{:.1} kB/s", r / 1e3),
        Some(r) => format!("{r:.0} B/s"),
    }
}

fn alive(a: bool) -> &'static str {
    if a {
        "alive"
    } else {
        "DEAD"
    }
}

fn ring_state(r: &RingView) -> String {
    match (&r.status.writer_died, r.status.writers.is_empty()) {
        (Some(d), _) => format!("writer {} died at frame {}", d.pid, d.frames),
        (None, true) => "no writer".into(),
        (None, false) => String::new(),
    }
}

/// The table: one row per ring, writer, reader, pool and worker, as cells.
fn rows(v: &View) -> Vec<(RowKind, [String; 9])> {
    let mut out = Vec::new();
    for r in &v.rings {
        let i = &r.info;
        out.push((
            RowKind::Ring,
            [
                i.name.clone(),
                i.mode.name().to_string(),
                format!(
                    "{} {} {} slots",
                    i.dtype.name(),
                    fmt_shape(&i.max_shape),
                    i.slots
                ),
                String::new(),
                format!("seq {}", r.status.write_seq),
                f_rate(r.frames_per_s),
                f_bytes_rate(r.frames_per_s.map(|f| f * i.slot_bytes as f64)),
                format!("backlog {}", r.status.backlog),
                ring_state(r),
            ],
        ));
        for w in &r.writers {
            out.push(peer_row(
                "writer",
                w,
                i.slot_bytes,
                [String::new(), String::new()],
            ));
        }
        for rd in &r.readers {
            let reader = [
                format!("backlog {}", rd.backlog),
                format!(
                    "held {}/{}  missed {} ({}/s)",
                    rd.peer.held,
                    rd.peer.max_held,
                    rd.peer.missed,
                    f_rate(rd.missed_per_s)
                ),
            ];
            out.push(peer_row("reader", rd, i.slot_bytes, reader));
        }
    }
    for p in &v.pools {
        out.push((
            RowKind::Ring,
            [
                p.pool.name.clone(),
                "pool".into(),
                format!("{} workers", p.workers.len()),
                format!("{} {}", p.pool.owner, alive(p.pool.owner_alive)),
                format!("tasks {}", p.workers.iter().map(|w| w.w.tasks).sum::<u64>()),
                f_rate(p.workers.iter().map(|w| w.tasks_per_s).sum::<Option<f64>>()),
                String::new(),
                String::new(),
                String::new(),
            ],
        ));
        for w in &p.workers {
            out.push((
                if w.w.alive || w.w.pid == 0 {
                    RowKind::Peer
                } else {
                    RowKind::Dead
                },
                [
                    format!("  worker {}", w.w.id),
                    String::new(),
                    String::new(),
                    format!("{} {}", w.w.pid, alive(w.w.alive)),
                    w.w.tasks.to_string(),
                    f_rate(w.tasks_per_s),
                    String::new(),
                    match w.busy_percent {
                        Some(b) => format!("busy {b:.0}%"),
                        None => "busy -".into(),
                    },
                    format!("restarts {}", w.w.restarts),
                ],
            ));
        }
    }
    for (name, error) in &v.unreadable {
        out.push((
            RowKind::Dead,
            [
                name.clone(),
                "unreadable".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                error.clone(),
            ],
        ));
    }
    out
}

/// The row of a writer or reader: its columns, then `last` (backlog and state).
fn peer_row(
    role: &str,
    p: &PeerView,
    slot_bytes: u64,
    last: [String; 2],
) -> (RowKind, [String; 9]) {
    let [backlog, state] = last;
    (
        if p.peer.alive {
            RowKind::Peer
        } else {
            RowKind::Dead
        },
        [
            format!("  {role} #{}", p.peer.index),
            String::new(),
            String::new(),
            format!("{} {}", p.peer.pid, alive(p.peer.alive)),
            p.peer.frames.to_string(),
            f_rate(p.frames_per_s),
            f_bytes_rate(p.frames_per_s.map(|f| f * slot_bytes as f64)),
            backlog,
            state,
        ],
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Ring,
    Peer,
    Dead,
}

const HEADER: [&str; 9] = [
    "NAME", "MODE", "LAYOUT", "PID", "FRAMES", "RATE/S", "BYTES/S", "BACKLOG", "STATE",
];

fn peer_json(p: &PeerView, reader: bool) -> Value {
    let mut v = json!({
        "index": p.peer.index,
        "pid": p.peer.pid,
        "alive": p.peer.alive,
        "frames": p.peer.frames,
        "frames_before": p.frames_before,
        "frames_per_s": p.frames_per_s,
    });
    if reader {
        v["backlog"] = json!(p.backlog);
        v["held"] = json!(p.peer.held);
        v["max_held"] = json!(p.peer.max_held);
        v["missed"] = json!(p.peer.missed);
        v["missed_per_s"] = json!(p.missed_per_s);
    }
    v
}

fn view_json(v: &View) -> Value {
    json!({
        "interval_s": v.secs,
        "rings": v.rings.iter().map(|r| json!({
            "name": r.info.name,
            "mode": r.info.mode.name(),
            "dtype": r.info.dtype.name(),
            "shape": r.info.max_shape,
            "slots": r.info.slots,
            "slot_bytes": r.info.slot_bytes,
            "write_seq": r.status.write_seq,
            "backlog": r.status.backlog,
            "frames_per_s": r.frames_per_s,
            "writer_died": r.status.writer_died.map(|d| json!({"pid": d.pid, "frames": d.frames})),
            "writers": r.writers.iter().map(|p| {
                let mut j = peer_json(p, false);
                j["bytes_per_s"] = json!(p.frames_per_s.map(|f| f * r.info.slot_bytes as f64));
                j
            }).collect::<Vec<_>>(),
            "readers": r.readers.iter().map(|p| peer_json(p, true)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "pools": v.pools.iter().map(|p| json!({
            "name": p.pool.name,
            "owner": p.pool.owner,
            "owner_alive": p.pool.owner_alive,
            "interval_s": p.secs,
            "workers": p.workers.iter().map(|w| json!({
                "id": w.w.id,
                "pid": w.w.pid,
                "alive": w.w.alive,
                "ready": w.w.ready,
                "busy": w.w.busy,
                "busy_percent": w.busy_percent,
                "tasks": w.w.tasks,
                "tasks_before": w.tasks_before,
                "tasks_per_s": w.tasks_per_s,
                "restarts": w.w.restarts,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "unreadable": v.unreadable.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
    })
}

/// The rows as aligned text (for `--once`).
fn text(v: &View) -> String {
    let rows = rows(v);
    let mut width = HEADER.map(str::len);
    for (_, r) in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (k, (c, w)) in cells.iter().zip(width).enumerate() {
            if k > 0 {
                s.push_str("  ");
            }
            s.push_str(&format!("{c:<w$}"));
        }
        s.trim_end().to_string()
    };
    let mut out = line(&HEADER.map(String::from));
    out.push('\n');
    for (_, r) in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no rings or pools)\n");
    }
    out
}

// ---------------------------------------------------------------- the command

/// Runs `shmflow top`.
pub fn run_top(a: TopArgs) -> CliResult {
    if a.once {
        let first = sample()?;
        std::thread::sleep(a.interval);
        let v = view(&first, sample()?, a.filter.as_deref(), a.sort);
        let mut out = Out::new();
        return if a.json {
            out.line(view_json(&v))
        } else {
            out.line(text(&v).trim_end())
        };
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            "shmflow top needs a terminal (stdin and stdout); for scripts use `shmflow top --once` or `--once --json`",
        ));
    }
    live(a)
}

/// What the live view shows besides the figures.
struct Ui {
    sort: SortKey,
    filter: String,
    /// The filter is being typed.
    editing: bool,
    scroll: usize,
}

fn live(a: TopArgs) -> CliResult {
    // SIGTERM (and SIGINT from another process: in raw mode Ctrl-C arrives as a key) stop the
    // loop so that the terminal is restored.
    let stop = shmflow::process::catch_interrupts()
        .map_err(|e| Failure::new(format!("cannot handle signals: {e}")))?;
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::new(format!("cannot set up the terminal: {e}")))?;
    let mut ui = Ui {
        sort: a.sort,
        filter: a.filter.unwrap_or_default(),
        editing: false,
        scroll: 0,
    };
    let result = (|| -> CliResult<bool> {
        // The first screen has no rates yet ("-"); the first ones come one interval later,
        // never from two reads microseconds apart.
        let filter = (!ui.filter.is_empty()).then_some(ui.filter.as_str());
        let mut before = sample()?;
        let mut shown = view(&before, before.clone(), filter, ui.sort);
        let mut next = Instant::now() + a.interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(true);
            }
            if Instant::now() >= next {
                let now = sample()?;
                let filter = (!ui.filter.is_empty()).then_some(ui.filter.as_str());
                shown = view(&before, now.clone(), filter, ui.sort);
                before = now;
                next = Instant::now() + a.interval;
            }
            terminal
                .draw(|f| draw(f, &shown, &ui, a.interval))
                .map_err(output_error)?;
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if !event::poll(wait).map_err(output_error)? {
                continue;
            }
            let Event::Key(k) = event::read().map_err(output_error)? else {
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
                return Ok(false);
            }
            if ui.editing {
                match k.code {
                    KeyCode::Enter => ui.editing = false,
                    KeyCode::Esc => {
                        ui.editing = false;
                        ui.filter.clear();
                    }
                    KeyCode::Backspace => {
                        ui.filter.pop();
                    }
                    KeyCode::Char(c) => ui.filter.push(c),
                    _ => {}
                }
                next = Instant::now();
                continue;
            }
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(false),
                KeyCode::Char('s') => {
                    ui.sort = ui.sort.next();
                    next = Instant::now();
                }
                KeyCode::Char('/') => ui.editing = true,
                KeyCode::Down => ui.scroll = ui.scroll.saturating_add(1),
                KeyCode::Up => ui.scroll = ui.scroll.saturating_sub(1),
                _ => {}
            }
        }
    })();
    // The terminal shows its cursor again when it drops; then raw mode and the alternate
    // screen go, whatever the loop returned.
    drop(terminal);
    ratatui::restore();
    match result {
        Ok(true) => Err(Failure::quiet(EXIT_INTERRUPTED)),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    }
}

fn draw(f: &mut ratatui::Frame, v: &View, ui: &Ui, interval: Duration) {
    let [title, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let rings = v.rings.len();
    let pools = v.pools.len();
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "shmflow top - {rings} ring{}, {pools} pool{} - every {:.1} s - sorted by {}",
            if rings == 1 { "" } else { "s" },
            if pools == 1 { "" } else { "s" },
            interval.as_secs_f64(),
            ui.sort.label()
        )))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    let all = rows(v);
    // Every column but the last is as wide as its widest cell (names are shown whole); the
    // last one, the state, takes the rest.
    let mut width = HEADER.map(|h| h.len() as u16);
    for (_, cells) in &all {
        for (w, c) in width.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count() as u16);
        }
    }
    let skip = ui.scroll.min(all.len().saturating_sub(1));
    let table_rows = all.into_iter().skip(skip).map(|(kind, cells)| {
        let style = match kind {
            RowKind::Ring => Style::new().add_modifier(Modifier::BOLD),
            RowKind::Peer => Style::new(),
            RowKind::Dead => Style::new().fg(Color::Red),
        };
        Row::new(cells.map(Cell::from)).style(style)
    });
    let widths: [Constraint; 9] = std::array::from_fn(|k| {
        if k + 1 == HEADER.len() {
            Constraint::Min(width[k])
        } else {
            Constraint::Length(width[k])
        }
    });
    let table = Table::new(table_rows, widths)
        .header(
            Row::new(HEADER.map(Cell::from)).style(Style::new().add_modifier(Modifier::REVERSED)),
        )
        .block(Block::new());
    f.render_widget(table, body);
    let keys = if ui.editing {
        format!("filter: {}_   (Enter keep, Esc clear)", ui.filter)
    } else if ui.filter.is_empty() {
        "q quit  s sort  / filter  Up/Down scroll".to_string()
    } else {
        format!("q quit  s sort  / filter [{}]  Up/Down scroll", ui.filter)
    };
    f.render_widget(Paragraph::new(Line::from(keys)), foot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_an_earlier_sample_that_is_not_larger() {
        assert_eq!(rate(10, None, 1.0), None);
        assert_eq!(rate(10, Some(4), 2.0), Some(3.0));
        assert_eq!(rate(3, Some(4), 2.0), None);
        assert_eq!(rate(3, Some(3), 0.0), None);
    }

    #[test]
    fn byte_rates_use_decimal_units() {
        assert_eq!(f_bytes_rate(Some(2.5e9)), "2.50 GB/s");
        assert_eq!(f_bytes_rate(Some(12_300_000.0)), "12.3 MB/s");
        assert_eq!(f_bytes_rate(None), "-");
    }
}
