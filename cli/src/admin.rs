//! `shmflow ls`, `inspect`, `rm` and `gc`: looking after the segments in `/dev/shm`.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Value};
use shmflow::{OpenError, PeerStatus, Ring, RingInfo, RingStatus};

use super::common::{
    classify, describe, fmt_shape, human_bytes, inspect_ring, CliResult, Failure, Out, Segment,
    SegmentKind, SHM_DIR,
};

// ---------------------------------------------------------------- ls

pub const LS_ABOUT: &str = "\
List the shmflow segments in /dev/shm: rings, with their size, dtype, shape, mode, slots, \
creator (and whether it is alive) and attached live readers and writers; worker pools' \
status blocks; and segments that cannot be read as rings (with the reason).

On a terminal the list is a table. Otherwise it is one line per segment, 12 tab-separated \
fields, `-` where a field does not apply:
  name kind size_bytes dtype shape mode slots creator_pid creator(alive|dead) readers writers note
where kind is ring, pool-status or unreadable, and readers/writers count live attached peers.";

pub const LS_EXAMPLES: &str = "\
Examples:
  shmflow ls
  shmflow ls | cut -f1,8,9          # names, creator pids and whether they are alive
  shmflow ls --json";

/// Arguments of `shmflow ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print a JSON array instead
    #[arg(long)]
    json: bool,
}

fn alive_word(alive: bool) -> &'static str {
    if alive {
        "alive"
    } else {
        "dead"
    }
}

fn live(peers: &[PeerStatus]) -> usize {
    peers.iter().filter(|p| p.alive).count()
}

/// Runs `shmflow ls`.
pub fn run_ls(a: LsArgs) -> CliResult {
    let entries = shmflow::segments::list()
        .map_err(|e| Failure::new(format!("could not list {SHM_DIR}: {e}")))?;
    let mut out = Out::new();
    if a.json {
        let list: Vec<Value> = entries.iter().map(segment_json).collect();
        return out.line(Value::Array(list));
    }
    let tty = out.tty;
    let rows: Vec<[String; 12]> = entries.iter().map(|seg| ls_row(seg, tty)).collect();
    if !tty {
        for r in rows {
            out.line(r.join("\t"))?;
        }
        return Ok(());
    }
    if rows.is_empty() {
        return out.line(format_args!("no shmflow segments in {SHM_DIR}"));
    }
    let header = [
        "NAME", "KIND", "SIZE", "DTYPE", "SHAPE", "MODE", "SLOTS", "CREATOR", "ALIVE", "READERS",
        "WRITERS", "NOTE",
    ]
    .map(String::from);
    let mut widths = [0usize; 12];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i == 11 {
                line.push_str(c);
            } else if i == 2 {
                line.push_str(&format!("{c:>w$}  "));
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.line(line.trim_end())?;
    }
    Ok(())
}

fn ls_row(seg: &Segment, tty: bool) -> [String; 12] {
    let size = |n: u64| if tty { human_bytes(n) } else { n.to_string() };
    let dash = || "-".to_owned();
    let name = &seg.name;
    match &seg.kind {
        SegmentKind::Ring(r) => {
            let (info, status) = &**r;
            let peers = |p: &[PeerStatus], max: u32| {
                if tty {
                    format!("{}/{max}", live(p))
                } else {
                    live(p).to_string()
                }
            };
            [
                name.to_owned(),
                "ring".into(),
                size(info.total_size),
                info.dtype.name().into(),
                fmt_shape(&info.max_shape),
                info.mode.name().into(),
                info.slots.to_string(),
                info.creator_pid.to_string(),
                alive_word(info.creator_alive).into(),
                peers(&status.readers, info.max_readers),
                peers(&status.writers, info.max_writers),
                if tty { String::new() } else { dash() },
            ]
        }
        SegmentKind::PoolStatus { pid, alive } => [
            name.to_owned(),
            "pool-status".into(),
            size(seg.size),
            dash(),
            dash(),
            dash(),
            dash(),
            pid.to_string(),
            alive_word(*alive).into(),
            dash(),
            dash(),
            format!("(pool status, pid {pid})"),
        ],
        SegmentKind::Unreadable(error) => [
            name.to_owned(),
            "unreadable".into(),
            size(seg.size),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            describe(error),
        ],
        _ => [
            name.to_owned(),
            "unknown".into(),
            size(seg.size),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ],
    }
}

fn peer_json(p: &PeerStatus) -> Value {
    json!({
        "index": p.index,
        "pid": p.pid,
        "alive": p.alive,
        "frames": p.frames,
        "cursor": p.cursor,
        "missed": p.missed,
    })
}

fn ring_json(info: &RingInfo, status: &RingStatus) -> Value {
    json!({
        "name": info.name,
        "kind": "ring",
        "dtype": info.dtype.name(),
        "shape": info.max_shape,
        "slots": info.slots,
        "mode": info.mode.name(),
        "max_readers": info.max_readers,
        "max_writers": info.max_writers,
        "slot_bytes": info.slot_bytes,
        "slot_stride": info.slot_stride,
        "total_size": info.total_size,
        "creator_pid": info.creator_pid,
        "creator_alive": info.creator_alive,
        "created_unix_ns": info.created_unix_ns,
        "status": {
            "write_seq": status.write_seq,
            "read_seq": status.read_seq,
            "backlog": status.backlog,
            "lost": status.lost,
            "abandoned": status.abandoned,
            "readers": status.readers.iter().map(peer_json).collect::<Vec<_>>(),
            "writers": status.writers.iter().map(peer_json).collect::<Vec<_>>(),
        },
    })
}

fn segment_json(seg: &Segment) -> Value {
    let (name, size) = (&seg.name, seg.size);
    match &seg.kind {
        SegmentKind::Ring(r) => ring_json(&r.0, &r.1),
        SegmentKind::PoolStatus { pid, alive } => json!({
            "name": name,
            "kind": "pool-status",
            "total_size": size,
            "creator_pid": pid,
            "creator_alive": alive,
        }),
        SegmentKind::Unreadable(error) => json!({
            "name": name,
            "kind": "unreadable",
            "total_size": size,
            "error": describe(error),
        }),
        _ => json!({ "name": name, "kind": "unknown", "total_size": size }),
    }
}

// ---------------------------------------------------------------- inspect

pub const INSPECT_ABOUT: &str = "\
Show a ring's header (dtype, shape, slots, mode, sizes, creator) and state (sequence numbers, \
backlog, attached readers and writers with their counters). Attaches nothing.

The text form is `key: value` lines, then one line per attached peer; --json prints one JSON \
object (the same fields as `shmflow ls --json`).";

pub const INSPECT_EXAMPLES: &str = "\
Examples:
  shmflow inspect cam
  shmflow inspect cam --json | jq .status.backlog";

/// Arguments of `shmflow inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Ring name
    name: String,
    /// Print one JSON object instead
    #[arg(long)]
    json: bool,
}

/// Runs `shmflow inspect`.
pub fn run_inspect(a: InspectArgs) -> CliResult {
    let (info, status) = inspect_ring(&a.name)?;
    let mut out = Out::new();
    if a.json {
        return out.line(ring_json(&info, &status));
    }
    let tty = out.tty;
    let bytes = |n: u64| {
        if tty {
            format!("{n} ({})", human_bytes(n))
        } else {
            n.to_string()
        }
    };
    let mut lines = vec![
        ("name", info.name.clone()),
        ("dtype", info.dtype.name().to_owned()),
        ("shape", fmt_shape(&info.max_shape)),
        ("frame_bytes", bytes(info.slot_bytes)),
        ("slots", info.slots.to_string()),
        ("slot_stride", bytes(info.slot_stride)),
        ("mode", info.mode.name().to_owned()),
        ("max_readers", info.max_readers.to_string()),
        ("max_writers", info.max_writers.to_string()),
        ("total_size", bytes(info.total_size)),
        ("creator_pid", info.creator_pid.to_string()),
        ("creator", alive_word(info.creator_alive).to_owned()),
        ("created_unix_ns", created(info.created_unix_ns, tty)),
        ("write_seq", status.write_seq.to_string()),
    ];
    if info.mode == shmflow::Mode::Queue {
        lines.push(("read_seq", status.read_seq.to_string()));
    }
    lines.push(("backlog", status.backlog.to_string()));
    if info.mode == shmflow::Mode::Queue {
        lines.push(("lost", status.lost.to_string()));
        lines.push(("abandoned", status.abandoned.to_string()));
    }
    lines.push(("readers", live(&status.readers).to_string()));
    lines.push(("writers", live(&status.writers).to_string()));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in lines {
        out.line(format_args!("{:<width$} {v}", format!("{k}:")))?;
    }
    for (role, peers) in [("reader", &status.readers), ("writer", &status.writers)] {
        for p in peers {
            out.line(format_args!(
                "{role} {}: pid={} {} frames={} cursor={} missed={}",
                p.index,
                p.pid,
                alive_word(p.alive),
                p.frames,
                p.cursor,
                p.missed
            ))?;
        }
    }
    Ok(())
}

/// Creation time: the raw ns, plus its age on a terminal.
fn created(ns: u64, tty: bool) -> String {
    if !tty {
        return ns.to_string();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let age = now.saturating_sub(ns) as f64 / 1e9;
    format!("{ns} ({age:.1} s ago)")
}

// ---------------------------------------------------------------- rm

pub const RM_ABOUT: &str = "\
Remove the named segments (rings or pool status blocks), like `rm /dev/shm/shmflow.NAME`. \
Processes that have a ring open keep using it; new opens fail. Prints nothing on success.";

pub const RM_EXAMPLES: &str = "\
Examples:
  shmflow rm cam
  shmflow rm -f cam preview       # no error for names that do not exist";

/// Arguments of `shmflow rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Ring names
    #[arg(required = true)]
    names: Vec<String>,
    /// Ignore names that do not exist
    #[arg(short, long)]
    force: bool,
}

/// Runs `shmflow rm`.
pub fn run_rm(a: RmArgs) -> CliResult {
    let mut errors = Vec::new();
    for name in &a.names {
        match Ring::<u8>::remove(name) {
            Ok(()) => {}
            Err(OpenError::NotFound { .. }) if a.force => {}
            Err(e) => errors.push(describe(&e)),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(Failure::new(errors.remove(0))),
        n => Err(Failure::new(format!(
            "could not remove {n} of {} segments: {}",
            a.names.len(),
            errors.join("; ")
        ))),
    }
}

// ---------------------------------------------------------------- gc

pub const GC_ABOUT: &str = "\
Remove stale segments: rings whose creator process is dead and that no live process is \
attached to, and worker pools' status blocks whose pool process is dead. Also reclaims dead \
readers and writers of live rings (a lossless writer no longer waits for them).

Never removes a ring whose creator is alive, one that live readers or writers use (attached or still attaching), a \
segment it cannot read as a ring (another user's, a foreign or corrupted one, one being \
initialised): those are reported as `skipped`. Without NAMEs it also removes writer FIFOs \
(`/dev/shm/.shmflow-<token>.writers`) that no ring uses and that are a minute old, left \
behind when a ring's file was deleted by hand. With NAMEs, only those segments are \
considered. Prints one line per action: `removed NAME (...)`, `reclaimed N dead peer(s) of \
NAME`, `skipped NAME (...)`; with --dry-run, `would remove` and `would reclaim`.";

pub const GC_EXAMPLES: &str = "\
Examples:
  shmflow gc --dry-run
  shmflow gc
  shmflow gc cam preview";

/// Arguments of `shmflow gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only consider these segments (default: every shmflow segment)
    names: Vec<String>,
    /// Print what would be done, change nothing
    #[arg(short = 'n', long)]
    dry_run: bool,
}

/// How long a segment may stay half-created before `gc` calls it abandoned (creating a ring
/// takes milliseconds).
const SETUP_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// If `name` is a ring whose creator never finished creating it — still mode `0200` (the mode
/// a ring has only during setup; whatever its contents: empty, zeros, a header not marked
/// ready), owned by this user, unchanged for [`SETUP_GRACE`] — returns its age.
fn abandoned_setup(name: &str) -> Option<std::time::Duration> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(shmflow::segments::path(name)).ok()?;
    // /proc/self belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    let age = meta.modified().ok()?.elapsed().ok()?;
    (meta.mode() & 0o7777 == 0o200 && meta.uid() == me && age >= SETUP_GRACE).then_some(age)
}

/// Runs `shmflow gc`.
pub fn run_gc(a: GcArgs) -> CliResult {
    let explicit = !a.names.is_empty();
    let names = if explicit {
        a.names.clone()
    } else {
        shmflow::list().map_err(|e| Failure::new(format!("could not list {SHM_DIR}: {e}")))?
    };
    let mut out = Out::new();
    let mut errors = Vec::new();
    let mut actions = 0;
    let would = if a.dry_run { "would " } else { "" };
    for name in &names {
        let seg = match classify(name) {
            Ok(seg) => seg,
            Err(OpenError::NotFound { .. }) if !explicit => continue,
            Err(e) => {
                errors.push(describe(&e));
                continue;
            }
        };
        let (stale, why) = match &seg.kind {
            SegmentKind::Ring(r) => {
                let (info, status) = &**r;
                let live_peers = live(&status.readers) + live(&status.writers);
                let dead_peers = status.readers.len() + status.writers.len() - live_peers;
                // Peers still attaching are live users too (a reader before its handshake is
                // not listed among the readers).
                if !info.creator_alive && live_peers == 0 && status.attaching == 0 {
                    (
                        true,
                        format!("ring, creator pid {} is dead", info.creator_pid),
                    )
                } else {
                    if dead_peers > 0 {
                        let n = if a.dry_run {
                            dead_peers
                        } else {
                            match shmflow::reclaim_dead_peers(name) {
                                Ok(n) => n,
                                Err(e) => {
                                    errors.push(describe(&e));
                                    continue;
                                }
                            }
                        };
                        if n > 0 {
                            actions += 1;
                            out.line(format_args!(
                                "{would}reclaim{} {n} dead peer(s) of {name}",
                                if a.dry_run { "" } else { "ed" }
                            ))?;
                        }
                    }
                    if !info.creator_alive {
                        out.line(format_args!(
                            "skipped {name} (creator pid {} is dead, but {live_peers} live \
                             peer(s) are attached)",
                            info.creator_pid
                        ))?;
                    }
                    (false, String::new())
                }
            }
            SegmentKind::PoolStatus { pid, alive } => {
                (!alive, format!("pool status, pid {pid} is dead"))
            }
            SegmentKind::Unreadable(error) => match abandoned_setup(name) {
                Some(age) => (
                    true,
                    format!(
                        "ring never initialised: its creator stopped while creating it, {} s ago",
                        age.as_secs()
                    ),
                ),
                None => {
                    out.line(format_args!("skipped {name} ({})", describe(error)))?;
                    (false, String::new())
                }
            },
            _ => (false, String::new()),
        };
        if !stale {
            continue;
        }
        actions += 1;
        if a.dry_run {
            out.line(format_args!("would remove {name} ({why})"))?;
            continue;
        }
        match Ring::<u8>::remove(name) {
            Ok(()) => out.line(format_args!("removed {name} ({why})"))?,
            Err(OpenError::NotFound { .. }) => {}
            Err(e) => errors.push(describe(&e)),
        }
    }
    // Writer FIFOs of rings that are gone (deleted by hand): only in a full sweep.
    if !explicit {
        let orphans = shmflow::segments::orphans(SETUP_GRACE)
            .map_err(|e| Failure::new(format!("could not list {SHM_DIR}: {e}")))?;
        for o in orphans {
            actions += 1;
            let what = format!(
                "{} (writer FIFO of a ring that is gone, unchanged for {} s)",
                o.path.display(),
                o.age.as_secs()
            );
            if a.dry_run {
                out.line(format_args!("would remove {what}"))?;
                continue;
            }
            match std::fs::remove_file(&o.path) {
                Ok(()) => out.line(format_args!("removed {what}"))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("could not remove {}: {e}", o.path.display())),
            }
        }
    }
    if actions == 0 && errors.is_empty() && out.tty {
        out.line(format_args!(
            "nothing to remove in {}*{}",
            shmflow::segments::path("").display(),
            if explicit {
                " (among the given names)"
            } else {
                ""
            }
        ))?;
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(Failure::new(errors.remove(0))),
        n => Err(Failure::new(format!("{n} errors: {}", errors.join("; ")))),
    }
}
