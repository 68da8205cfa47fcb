//! Queue rings between real processes: several writers and readers, every frame delivered
//! exactly once; `try_reserve` on a full queue; uncommitted slots skipped and counted.
//!
//! Writers tag each frame with `(writer id << 32) | counter` and fill it with
//! `common::fill(tag, ..)`; readers check the contents against the tag and write a ledger of
//! `(tag, seq)` pairs to a file, which the parent checks.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use shmflow::{
    Mode, Reader, RecvTimeoutError, ReserveTimeoutError, Ring, TryRecvError, TryReserveError,
};

const SHAPE: [usize; 2] = [64, 64];
/// Generous bound for anything that should happen promptly ("does not hang").
const PATIENCE: Duration = Duration::from_secs(20);

fn tag(writer: u64, counter: u64) -> u64 {
    (writer << 32) | counter
}

fn queue(name: &str, slots: u32, readers: u32, writers: u32) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape(SHAPE)
        .slots(slots)
        .mode(Mode::Queue)
        .max_readers(readers)
        .max_writers(writers)
        .build()
        .unwrap()
}

/// A ledger file under the temp dir, removed on drop.
struct LedgerFile(PathBuf);

impl LedgerFile {
    fn new(name: &str, reader: usize) -> Self {
        LedgerFile(std::env::temp_dir().join(format!("shmflow-test-{name}-r{reader}.ledger")))
    }

    fn write(&self, entries: &[(u64, u64)]) {
        let text: String = entries.iter().map(|(t, s)| format!("{t} {s}\n")).collect();
        std::fs::write(&self.0, text).unwrap();
    }

    fn read(&self) -> Vec<(u64, u64)> {
        let text = std::fs::read_to_string(&self.0)
            .unwrap_or_else(|e| panic!("ledger {}: {e}", self.0.display()));
        text.lines()
            .map(|l| {
                let mut it = l.split(' ').map(|x| x.parse::<u64>().unwrap());
                (it.next().unwrap(), it.next().unwrap())
            })
            .collect()
    }
}

impl Drop for LedgerFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads until `Disconnected`, checking each frame against its tag, pausing now and then
/// (`pause_every` frames, 0 = never) while holding the frame. Returns `(tag, seq)` per frame.
fn drain(who: &str, reader: &mut Reader<u8>, pause_every: u64) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    let mut last_seq = None;
    loop {
        let f = match reader.recv_timeout(PATIENCE) {
            Ok(f) => f,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{who}: {e} after {} frames", got.len()),
        };
        assert_eq!(f.shape(), &SHAPE[..], "{who}: shape");
        assert_eq!(f.missed(), 0, "{who}: a queue never reports missed frames");
        assert!(
            check(f.tag(), f.as_bytes()),
            "{who}: frame seq {} tag {:#x}: contents do not match the tag",
            f.seq(),
            f.tag()
        );
        // One reader takes positions in increasing order.
        assert!(
            last_seq.is_none_or(|l| f.seq() > l),
            "{who}: seq {} after {last_seq:?}",
            f.seq()
        );
        last_seq = Some(f.seq());
        got.push((f.tag(), f.seq()));
        if pause_every > 0 && (got.len() as u64).is_multiple_of(pause_every) {
            std::thread::sleep(Duration::from_millis(1));
            assert!(
                check(f.tag(), f.as_bytes()),
                "{who}: frame changed while held"
            );
        }
    }
    assert_eq!(reader.frames_read(), got.len() as u64, "{who}: frames_read");
    got
}

/// Checks the readers' ledgers: no frame twice (by tag or by seq), exactly the expected tags,
/// and each writer's frames in increasing seq order. Returns tag -> seq.
fn check_union(ledgers: &[Vec<(u64, u64)>], expected: &BTreeSet<u64>) -> BTreeMap<u64, u64> {
    let mut by_tag = BTreeMap::new();
    let mut seqs = BTreeSet::new();
    for (r, l) in ledgers.iter().enumerate() {
        for &(t, s) in l {
            if let Some(prev) = by_tag.insert(t, s) {
                panic!("tag {t:#x} delivered twice (seq {prev} and {s}; reader {r})");
            }
            assert!(seqs.insert(s), "seq {s} delivered twice (reader {r})");
        }
    }
    let got: BTreeSet<u64> = by_tag.keys().copied().collect();
    let missing: Vec<_> = expected.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "delivered {} frames, expected {}; missing {missing:x?}, unexpected {extra:x?}",
        got.len(),
        expected.len()
    );
    // A writer's own frames get increasing sequence numbers.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (&t, &s) in &by_tag {
        let w = t >> 32;
        if let Some(&p) = last.get(&w) {
            assert!(s > p, "writer {w}: frame {t:#x} has seq {s}, before {p}");
        }
        last.insert(w, s);
    }
    by_tag
}

// ------------------------------------------------------------------ tests

/// 2 writer processes, 3 reader processes: every frame is delivered exactly once, intact.
#[test]
fn two_writers_three_readers_deliver_each_frame_exactly_once() {
    const PER_WRITER: u64 = 1000;
    const WRITERS: u64 = 2;
    const READERS: usize = 3;
    let name = unique_name("q-mpmc");
    let _g = RingGuard(name.clone());
    // One more writer entry for the parent's sentinel: it keeps the ring "connected" until both
    // writer processes have attached and finished (otherwise readers could see Disconnected
    // between the first writer leaving and the second arriving).
    let ring = queue(&name, 8, READERS as u32, WRITERS as u32 + 1);
    let sentinel = ring.writer().unwrap();
    let files: Vec<LedgerFile> = (0..READERS).map(|r| LedgerFile::new(&name, r)).collect();

    let readers: Vec<Child> = files
        .iter()
        .enumerate()
        .map(|(r, file)| {
            let n = name.clone();
            fork_child(move || {
                let who = format!("reader {r}");
                let mut reader = Ring::<u8>::open(&n).unwrap().reader().unwrap();
                // Reader 0 pauses often (holding its frame), so the others take more.
                let got = drain(&who, &mut reader, if r == 0 { 16 } else { 0 });
                file.write(&got);
                0
            })
        })
        .collect();
    let writers: Vec<Child> = (0..WRITERS)
        .map(|wid| {
            let n = name.clone();
            fork_child(move || {
                let ring = Ring::<u8>::open(&n).unwrap();
                let mut w = ring.writer().unwrap();
                let mut last_seq = None;
                for counter in 0..PER_WRITER {
                    let t = tag(wid, counter);
                    let mut s = w.reserve_timeout(PATIENCE).unwrap();
                    assert!(last_seq.is_none_or(|l| s.seq() > l));
                    last_seq = Some(s.seq());
                    fill(t, s.as_mut_bytes());
                    s.set_tag(t);
                    s.commit();
                }
                assert_eq!(w.frames_written(), PER_WRITER);
                0
            })
        })
        .collect();
    for c in writers {
        c.join_ok();
    }
    drop(sentinel);
    for c in readers {
        c.join_ok();
    }

    let ledgers: Vec<_> = files.iter().map(LedgerFile::read).collect();
    let expected: BTreeSet<u64> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |c| tag(w, c)))
        .collect();
    let by_tag = check_union(&ledgers, &expected);
    let seqs: BTreeSet<u64> = by_tag.values().copied().collect();
    let total = WRITERS * PER_WRITER;
    assert_eq!(
        seqs,
        (0..total).collect::<BTreeSet<_>>(),
        "sequence numbers 0..{total}"
    );
    let st = ring.status();
    assert_eq!(
        (st.write_seq, st.read_seq, st.backlog, st.abandoned, st.lost),
        (total, total, 0, 0, 0),
        "{st:?}"
    );
}

/// `try_reserve` on a full queue returns `Full` at once (also while a reader holds a frame it
/// took), `reserve_timeout` times out, and a slot frees up only when a reader releases one.
#[test]
fn try_reserve_on_full_queue_returns_full_immediately() {
    const SLOTS: u64 = 4;
    let name = unique_name("q-full");
    let _g = RingGuard(name.clone());
    let ring = queue(&name, SLOTS as u32, 1, 1);

    // A writer process fills the queue; no reader is attached.
    let n = name.clone();
    fork_child(move || {
        let mut w = Ring::<u8>::open(&n).unwrap().writer().unwrap();
        for seq in 0..SLOTS {
            let mut s = w.try_reserve().expect("free slot");
            assert_eq!(s.seq(), seq);
            fill(seq, s.as_mut_bytes());
            s.set_tag(seq);
            s.commit();
        }
        let t = Instant::now();
        for _ in 0..100 {
            assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "try_reserve on a full queue took {:?} for 100 calls",
            t.elapsed()
        );
        0
    })
    .join_ok();
    assert_eq!(ring.status().backlog, SLOTS);

    // This process takes frame 0 and holds it: the queue is still full.
    let mut reader = ring.reader().unwrap();
    let f = reader.try_recv().unwrap();
    {
        assert_eq!((f.seq(), f.tag()), (0, 0));
        assert!(check(0, f.as_bytes()));
    }
    let n = name.clone();
    fork_child(move || {
        let mut w = Ring::<u8>::open(&n).unwrap().writer().unwrap();
        let t = Instant::now();
        assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let t = Instant::now();
        assert!(matches!(
            w.reserve_timeout(Duration::from_millis(50)),
            Err(ReserveTimeoutError::Timeout)
        ));
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(50) && e < Duration::from_secs(2),
            "reserve_timeout(50 ms) returned after {e:?}"
        );
        0
    })
    .join_ok();

    // Released: one slot is free again, and only one.
    drop(f);
    let n = name.clone();
    fork_child(move || {
        let mut w = Ring::<u8>::open(&n).unwrap().writer().unwrap();
        let mut s = w.try_reserve().expect("a slot after the release");
        assert_eq!(s.seq(), SLOTS);
        fill(SLOTS, s.as_mut_bytes());
        s.set_tag(SLOTS);
        s.commit();
        assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
        0
    })
    .join_ok();

    for seq in 1..=SLOTS {
        let f = reader.try_recv().unwrap();
        assert_eq!((f.seq(), f.tag()), (seq, seq));
        assert!(check(seq, f.as_bytes()));
    }
    // Writers gone, queue drained.
    assert!(matches!(reader.try_recv(), Err(TryRecvError::Disconnected)));
}

/// A slot reserved and dropped without `commit` publishes nothing: readers skip its sequence,
/// `status().abandoned` counts it. First with the reader arriving afterwards, then with two
/// reader processes waiting while a writer process drops every third slot.
#[test]
fn dropped_write_slot_is_skipped_and_counted() {
    // Phase 1: commit, drop, drop (unfilled), commit, drop; then a reader comes.
    let name = unique_name("q-drop1");
    let _g = RingGuard(name.clone());
    let ring = queue(&name, 8, 2, 1);
    let n = name.clone();
    fork_child(move || {
        let mut w = Ring::<u8>::open(&n).unwrap().writer().unwrap();
        let mut s = w.reserve().unwrap();
        fill(10, s.as_mut_bytes());
        s.set_tag(10);
        assert_eq!(s.commit(), 0);
        let mut s = w.reserve().unwrap();
        assert_eq!(s.seq(), 1);
        fill(11, s.as_mut_bytes());
        s.set_tag(11);
        drop(s);
        let s = w.reserve().unwrap();
        assert_eq!(s.seq(), 2);
        drop(s);
        let mut s = w.reserve().unwrap();
        fill(13, s.as_mut_bytes());
        s.set_tag(13);
        assert_eq!(s.commit(), 3);
        let mut s = w.reserve().unwrap();
        fill(14, s.as_mut_bytes());
        drop(s);
        0
    })
    .join_ok();
    assert_eq!(ring.status().abandoned, 3);
    let mut reader = ring.reader().unwrap();
    for (seq, t) in [(0, 10), (3, 13)] {
        let f = reader.recv_timeout(PATIENCE).unwrap();
        assert_eq!((f.seq(), f.tag()), (seq, t));
        assert!(check(t, f.as_bytes()));
    }
    assert!(matches!(
        reader.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert_eq!(ring.status().abandoned, 3);
    drop(reader);

    // Phase 2: readers already waiting while the writer drops slots.
    const FRAMES: u64 = 600;
    let name = unique_name("q-drop2");
    let _g2 = RingGuard(name.clone());
    let ring = queue(&name, 4, 2, 1);
    let files: Vec<LedgerFile> = (0..2).map(|r| LedgerFile::new(&name, r)).collect();
    let readers: Vec<Child> = files
        .iter()
        .enumerate()
        .map(|(r, file)| {
            let n = name.clone();
            fork_child(move || {
                let mut reader = Ring::<u8>::open(&n).unwrap().reader().unwrap();
                let got = drain(&format!("reader {r}"), &mut reader, 0);
                file.write(&got);
                0
            })
        })
        .collect();
    wait_until("2 readers", PATIENCE, || ring.status().readers.len() == 2);
    let n = name.clone();
    let writer = fork_child(move || {
        let mut w = Ring::<u8>::open(&n).unwrap().writer().unwrap();
        for i in 0..FRAMES {
            let mut s = w.reserve_timeout(PATIENCE).unwrap();
            assert_eq!(s.seq(), i);
            fill(i, s.as_mut_bytes());
            s.set_tag(i);
            if i % 3 == 1 {
                drop(s);
            } else {
                s.commit();
            }
            if i % 50 == 0 {
                // Let the readers catch up and go to sleep now and then.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // The last reservation is dropped too: readers skip it, then see Disconnected.
        let s = w.reserve_timeout(PATIENCE).unwrap();
        assert_eq!(s.seq(), FRAMES);
        drop(s);
        0
    });
    writer.join_ok();
    for c in readers {
        c.join_ok();
    }
    let ledgers: Vec<_> = files.iter().map(LedgerFile::read).collect();
    let expected: BTreeSet<u64> = (0..FRAMES).filter(|i| i % 3 != 1).collect();
    let by_tag = check_union(&ledgers, &expected);
    for (t, s) in by_tag {
        assert_eq!(t, s, "frame tagged {t} delivered with seq {s}");
    }
    // i % 3 == 1 below FRAMES, plus the last reservation.
    let dropped = (0..FRAMES).filter(|i| i % 3 == 1).count() as u64 + 1;
    let st = ring.status();
    assert_eq!(st.abandoned, dropped, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    assert_eq!(st.backlog, 0, "{st:?}");
}
