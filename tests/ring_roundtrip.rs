//! Round trips of every dtype and several shapes between real processes: a forked child and an
//! unrelated process (this test binary re-executed, opening the rings by name).
//!
//! The parent writes each frame into a `to` ring; the child reads it, checks it element by
//! element, and echoes it into a `from` ring; the parent reads the echo and checks it again. The
//! frames alternate between the zero-copy path (`reserve` + `set_shape` + fill + `commit`) and
//! the copying `Writer::send`, and between the max shape and smaller shapes.

mod common;

use std::fmt::Debug;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ndarray::{Array, ArrayView2, Dimension, Ix1, Ix2, Ix3, Ix4, IxDyn};
use shmflow::{
    Backpressure, CreateError, Element, Mode, OpenError, Reader, RecvTimeoutError, Ring, ShapeError,
};

/// Frames per ring pair.
const FRAMES: u64 = 8;
/// Generous bound for anything that should happen promptly ("does not hang").
const PATIENCE: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ element values

/// An element type with a deterministic value for (frame, index), spread over the whole range of
/// the type (high bits, negative values, fractions), so a byte-order or width mistake shows.
trait Val: Element + PartialEq + Debug {
    const NAME: &'static str;
    fn val(seq: u64, i: usize) -> Self;
}

fn mix(seq: u64, i: usize) -> u64 {
    // splitmix64 of (seq, i)
    let mut z = seq
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl Val for $t {
            const NAME: &'static str = stringify!($t);
            fn val(seq: u64, i: usize) -> Self {
                mix(seq, i) as $t
            }
        }
    )*};
}
int_val!(u8, i8, u16, i16, u32, i32, u64, i64);

impl Val for f32 {
    const NAME: &'static str = "f32";
    fn val(seq: u64, i: usize) -> Self {
        (mix(seq, i) as i32 as f32) / 64.0
    }
}

impl Val for f64 {
    const NAME: &'static str = "f64";
    fn val(seq: u64, i: usize) -> Self {
        (mix(seq, i) as i64 as f64) / 1024.0
    }
}

// ------------------------------------------------------------------ frame plan

fn max_shape(rank: usize) -> Vec<usize> {
    match rank {
        1 => vec![40],
        2 => vec![6, 10],
        3 => vec![3, 4, 5],
        _ => unreachable!(),
    }
}

/// The shape of frame `k`: the max shape, or one of three smaller shapes (set with
/// `set_shape` / given to `send`).
fn frame_shape(max: &[usize], k: u64) -> Vec<usize> {
    match k % 4 {
        0 => max.to_vec(),
        1 => max.iter().map(|d| d.div_ceil(2)).collect(),
        2 => {
            let mut s = max.to_vec();
            s[0] = 1;
            s
        }
        _ => {
            let mut s = max.to_vec();
            *s.last_mut().unwrap() -= 1;
            s
        }
    }
}

/// Frames the parent writes with `reserve` (tag and timestamp set); the others go by `send`.
fn parent_reserves(k: u64) -> bool {
    k.is_multiple_of(2)
}
/// Echoes the child writes with `reserve`; the others go by `send`.
fn child_reserves(k: u64) -> bool {
    k % 4 < 2
}
fn parent_tag(k: u64) -> u64 {
    0xA5A5_0000_0000_0000 | (k * 3 + 1000)
}
fn parent_ts(k: u64) -> u64 {
    1_700_000_000_000_000_000 + k
}
const ECHO_TAG_XOR: u64 = 0x0F0F_F0F0_1234_5678;
/// The child's first frame on the `from` ring, sent once its `to` reader is attached (a
/// broadcast reader only sees frames committed after it attached, so the parent waits for it).
const HELLO_TAG: u64 = 0x4845_4c4c_4f00_0000;
const HELLO_SEQ: u64 = u64::MAX;

fn frame_data<T: Val>(k: u64, shape: &[usize]) -> Array<T, IxDyn> {
    let n: usize = shape.iter().product();
    Array::from_shape_vec(IxDyn(shape), (0..n).map(|i| T::val(k, i)).collect()).unwrap()
}

/// Checks a received frame's contents element by element, both as a row-major slice and through
/// the n-dimensional view (so the view's shape and strides agree with the slice).
fn check_contents<T: Val>(who: &str, k: u64, slice: &[T], view: &ndarray::ArrayViewD<'_, T>) {
    let shape = view.shape().to_vec();
    let n: usize = shape.iter().product();
    assert_eq!(slice.len(), n, "{who}: frame {k}: slice length");
    for (i, x) in slice.iter().enumerate() {
        assert_eq!(
            *x,
            T::val(k, i),
            "{who}: frame {k}: element {i} ({})",
            T::NAME
        );
    }
    // Through the view: element at multi-index idx is the row-major element of that index.
    for (idx, x) in view.indexed_iter() {
        let linear = idx
            .slice()
            .iter()
            .zip(&shape)
            .fold(0usize, |acc, (i, d)| acc * d + i);
        assert_eq!(
            *x,
            T::val(k, linear),
            "{who}: frame {k}: view element {idx:?}"
        );
    }
}

// ------------------------------------------------------------------ the two sides

/// The child side for one ring pair: read every frame from `to`, check it, echo it into `from`.
/// Also checks that opening with the wrong dtype or number of dimensions is refused, and that
/// opening with the right fixed dimensionality works.
fn echo<T: Val>(who: &str, to: &str, from: &str) {
    // Wrong element type and wrong rank: LayoutMismatch, for every dtype.
    let wrong_t = if T::NAME == "u8" {
        Ring::<i8>::open(to).map(drop)
    } else {
        Ring::<u8>::open(to).map(drop)
    };
    assert!(
        matches!(wrong_t, Err(OpenError::LayoutMismatch { .. })),
        "{who}: {} ring opened as another dtype: {wrong_t:?}",
        T::NAME
    );
    let wrong_d = Ring::<T, Ix4>::open(to).map(drop);
    assert!(
        matches!(wrong_d, Err(OpenError::LayoutMismatch { .. })),
        "{who}: opened as Ix4: {wrong_d:?}"
    );

    let ring = Ring::<T>::open(to).unwrap();
    let max = ring.info().max_shape.clone();
    let rank = max.len();
    // The right fixed dimensionality opens.
    match rank {
        1 => drop(Ring::<T, Ix1>::open(to).unwrap()),
        2 => drop(Ring::<T, Ix2>::open(to).unwrap()),
        3 => drop(Ring::<T, Ix3>::open(to).unwrap()),
        _ => unreachable!(),
    }
    let wrong_rank = match rank {
        1 => Ring::<T, Ix2>::open(to).map(drop),
        _ => Ring::<T, Ix1>::open(to).map(drop),
    };
    assert!(
        matches!(wrong_rank, Err(OpenError::LayoutMismatch { .. })),
        "{who}: rank-{rank} ring opened with another rank: {wrong_rank:?}"
    );

    let mut reader = ring.reader().unwrap();
    let mut writer = Ring::<T>::open(from).unwrap().writer().unwrap();
    // Attached: say hello (echo frame 0); echo k is frame k + 1 of the `from` ring.
    let mut s = writer.reserve().unwrap();
    for (i, x) in s.as_mut_slice().iter_mut().enumerate() {
        *x = T::val(HELLO_SEQ, i);
    }
    s.set_tag(HELLO_TAG);
    assert_eq!(s.commit(), 0);
    let mut k = 0u64;
    loop {
        let f = match reader.recv_timeout(PATIENCE) {
            Ok(f) => f,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{who}: recv {}: {e}", T::NAME),
        };
        let shape = frame_shape(&max, k);
        assert_eq!(f.seq(), k, "{who}: sequence number");
        assert_eq!(f.missed(), 0, "{who}: missed");
        assert_eq!(f.shape(), &shape[..], "{who}: frame {k}: shape");
        assert_eq!(f.view().shape(), &shape[..], "{who}: frame {k}: view shape");
        if parent_reserves(k) {
            assert_eq!(f.tag(), parent_tag(k), "{who}: frame {k}: tag");
            assert_eq!(
                f.timestamp_ns(),
                parent_ts(k),
                "{who}: frame {k}: timestamp"
            );
        } else {
            assert_eq!(f.tag(), 0, "{who}: frame {k}: tag of a sent frame");
            assert!(f.timestamp_ns() > 0, "{who}: frame {k}: default timestamp");
        }
        assert_eq!(
            f.as_bytes().len(),
            shape.iter().product::<usize>() * std::mem::size_of::<T>()
        );
        check_contents(who, k, f.as_slice(), &f.view());

        // Echo it back.
        if child_reserves(k) {
            let mut s = writer.reserve().unwrap();
            assert_eq!(s.seq(), k + 1, "{who}: echo reservation sequence");
            s.set_shape(f.shape()).unwrap();
            s.as_mut_slice().copy_from_slice(f.as_slice());
            s.set_tag(f.tag() ^ ECHO_TAG_XOR);
            s.set_timestamp_ns(f.timestamp_ns() + 1);
            assert_eq!(s.commit(), k + 1);
        } else {
            assert_eq!(writer.send(&f.view()).unwrap(), k + 1);
        }
        k += 1;
    }
    assert_eq!(k, FRAMES, "{who}: frames received before Disconnected");
}

/// One ring pair on the parent side: the `to` ring (parent writes) and the `from` ring (parent
/// reads, its reader attached before the child starts).
struct Case<T: Val> {
    to: Ring<T>,
    from_reader: Reader<T>,
    _guards: (RingGuard, RingGuard),
    arg: String,
}

trait ParentCase {
    fn arg(&self) -> &str;
    fn run(self: Box<Self>, who: &str);
}

fn case<T: Val>(tag: &str, rank: usize) -> Box<dyn ParentCase> {
    let to_name = unique_name(&format!("{tag}-to-{}-{rank}", T::NAME));
    let from_name = unique_name(&format!("{tag}-from-{}-{rank}", T::NAME));
    let guards = (RingGuard(to_name.clone()), RingGuard(from_name.clone()));
    let build = |name: &str| {
        Ring::<T>::create(name)
            .shape(max_shape(rank))
            .slots(4)
            .mode(Mode::Broadcast(Backpressure::Block))
            .build()
            .unwrap()
    };
    let to = build(&to_name);
    let from = build(&from_name);
    let from_reader = from.reader().unwrap();
    Box::new(Case {
        to,
        from_reader,
        _guards: guards,
        arg: format!("{}:{to_name}:{from_name}", T::NAME),
    })
}

impl<T: Val> ParentCase for Case<T> {
    fn arg(&self) -> &str {
        &self.arg
    }

    fn run(self: Box<Self>, who: &str) {
        let Case {
            to,
            mut from_reader,
            _guards,
            arg,
        } = *self;
        let who = format!("{who} {arg}");
        let max = to.info().max_shape.clone();
        // The child's hello says its `to` reader is attached.
        {
            let h = from_reader
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("{who}: hello: {e}"));
            assert_eq!((h.seq(), h.tag(), h.shape()), (0, HELLO_TAG, &max[..]));
            check_contents(&who, HELLO_SEQ, h.as_slice(), &h.view());
        }
        let mut writer = to.writer().unwrap();
        for k in 0..FRAMES {
            let shape = frame_shape(&max, k);
            let data = frame_data::<T>(k, &shape);
            if parent_reserves(k) {
                let mut s = writer.reserve().unwrap();
                assert_eq!(s.seq(), k);
                assert_eq!(s.shape(), &max[..], "a reservation starts at the max shape");
                s.set_shape(&shape).unwrap();
                assert_eq!(s.shape(), &shape[..]);
                s.as_mut_slice()
                    .copy_from_slice(data.as_slice().expect("standard layout"));
                s.set_tag(parent_tag(k));
                s.set_timestamp_ns(parent_ts(k));
                assert_eq!(s.commit(), k);
            } else {
                assert_eq!(writer.send(&data.view()).unwrap(), k);
            }

            // The echo.
            let f = from_reader
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("{who}: echo of frame {k}: {e}"));
            assert_eq!(f.seq(), k + 1, "{who}: echo sequence");
            assert_eq!(f.missed(), 0);
            assert_eq!(f.shape(), &shape[..], "{who}: echo {k} shape");
            if child_reserves(k) {
                let orig_tag = if parent_reserves(k) { parent_tag(k) } else { 0 };
                assert_eq!(f.tag(), orig_tag ^ ECHO_TAG_XOR, "{who}: echo {k} tag");
                if parent_reserves(k) {
                    assert_eq!(f.timestamp_ns(), parent_ts(k) + 1, "{who}: echo {k} ts");
                }
            } else {
                assert_eq!(f.tag(), 0, "{who}: echo {k} tag (sent)");
            }
            check_contents(&who, k, f.as_slice(), &f.view());
        }
        drop(writer);
        // The child sees Disconnected, detaches its writer: so do we.
        match from_reader.recv_timeout(PATIENCE) {
            Err(RecvTimeoutError::Disconnected) => {}
            Ok(f) => panic!("{who}: unexpected extra echo {}", f.seq()),
            Err(e) => panic!("{who}: expected Disconnected, got {e}"),
        }
    }
}

fn all_cases(tag: &str) -> Vec<Box<dyn ParentCase>> {
    let mut v = Vec::new();
    for rank in 1..=3 {
        v.push(case::<u8>(tag, rank));
        v.push(case::<i8>(tag, rank));
        v.push(case::<u16>(tag, rank));
        v.push(case::<i16>(tag, rank));
        v.push(case::<u32>(tag, rank));
        v.push(case::<i32>(tag, rank));
        v.push(case::<u64>(tag, rank));
        v.push(case::<i64>(tag, rank));
        v.push(case::<f32>(tag, rank));
        v.push(case::<f64>(tag, rank));
    }
    v
}

/// Child side: runs `echo` for each "dtype:to:from" argument, in order.
fn echo_all(who: &str, args: &[String]) {
    for a in args {
        let mut it = a.split(':');
        let (t, to, from) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        match t {
            "u8" => echo::<u8>(who, to, from),
            "i8" => echo::<i8>(who, to, from),
            "u16" => echo::<u16>(who, to, from),
            "i16" => echo::<i16>(who, to, from),
            "u32" => echo::<u32>(who, to, from),
            "i32" => echo::<i32>(who, to, from),
            "u64" => echo::<u64>(who, to, from),
            "i64" => echo::<i64>(who, to, from),
            "f32" => echo::<f32>(who, to, from),
            "f64" => echo::<f64>(who, to, from),
            other => panic!("unknown dtype {other}"),
        }
    }
}

// ------------------------------------------------------------------ re-exec helper

/// A re-executed child whose stdout and stderr are collected; killed if dropped while running.
struct ReexecChild {
    child: std::process::Child,
    output: Option<std::thread::JoinHandle<String>>,
}

impl ReexecChild {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn re-executed test binary");
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let output = std::thread::spawn(move || {
            let t = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            });
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s + &t.join().unwrap_or_default()
        });
        ReexecChild {
            child,
            output: Some(output),
        }
    }

    fn output(&mut self) -> String {
        self.output
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Kills the child (if still running) and returns what it printed.
    fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    /// Waits for the child (killing it after `timeout`): its status and what it printed.
    fn finish(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, self.output());
            }
            if start.elapsed() > timeout {
                let text = self.kill();
                panic!("re-executed child did not exit within {timeout:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ReexecChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

// ------------------------------------------------------------------ tests

#[test]
fn fork_round_trip_every_dtype_and_shape() {
    let cases = all_cases("rtf");
    let args: Vec<String> = cases.iter().map(|c| c.arg().to_owned()).collect();
    let child = fork_child(move || {
        echo_all("forked child", &args);
        0
    });
    for c in cases {
        c.run("parent (fork)");
    }
    child.join_ok();
}

#[test]
fn unrelated_process_round_trip_every_dtype_and_shape() {
    const ENTRY: &str = "unrelated_process_round_trip_every_dtype_and_shape";
    if let Some((role, args)) = role() {
        assert_eq!(role, "echo");
        echo_all("re-executed child", &args);
        return;
    }
    let cases = all_cases("rtx");
    let args: Vec<String> = cases.iter().map(|c| c.arg().to_owned()).collect();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = ReexecChild::spawn(reexec(ENTRY, "echo", &arg_refs));
    let parent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for c in cases {
            c.run("parent (re-exec)");
        }
    }));
    if let Err(e) = parent {
        let text = child.kill();
        panic!(
            "parent side failed: {}\n--- re-executed child's output ---\n{text}",
            panic_message(&*e)
        );
    }
    let (status, text) = child.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "re-executed child failed ({status}):\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "the re-executed child did not run its role:\n{text}"
    );
}

/// `Ring::<f32, Ix2>`: typed views on both sides, smaller shapes, `send`; opening a 3-D ring
/// as `Ix2` or with the wrong element type is `LayoutMismatch`; creating an `Ix2` ring with a
/// 3-D shape is refused.
#[test]
fn typed_ix2_ring_and_layout_mismatch() {
    let name2 = unique_name("rt-ix2");
    let name3 = unique_name("rt-ix3");
    let _g2 = RingGuard(name2.clone());
    let _g3 = RingGuard(name3.clone());

    let bad = Ring::<f32, Ix2>::create(&unique_name("rt-bad"))
        .shape([2, 3, 4])
        .build();
    assert!(
        matches!(bad, Err(CreateError::Layout(_))),
        "Ix2 ring with a 3-D shape: {bad:?}"
    );

    let ring2 = Ring::<f32, Ix2>::create(&name2)
        .shape([8, 16])
        .slots(4)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .unwrap();
    let _ring3 = Ring::<f32, Ix3>::create(&name3)
        .shape([2, 3, 4])
        .slots(2)
        .build()
        .unwrap();
    let mut reader = ring2.reader().unwrap();

    const N: u64 = 6;
    let value = |k: u64, i: usize, j: usize| (k * 1000 + (i * 16 + j) as u64) as f32 * 0.5 - 7.0;
    let shape_of = |k: u64| (8 - k as usize, 16 - 2 * k as usize);

    let (n2, n3) = (name2.clone(), name3.clone());
    let child = fork_child(move || {
        // A 3-D f32 ring: not Ix2, not f64 or u8, and Ix3 / IxDyn f32 open fine.
        let e = Ring::<f32, Ix2>::open(&n3).map(drop);
        assert!(matches!(e, Err(OpenError::LayoutMismatch { .. })), "{e:?}");
        let e = Ring::<f64, Ix3>::open(&n3).map(drop);
        assert!(matches!(e, Err(OpenError::LayoutMismatch { .. })), "{e:?}");
        let e = Ring::<u8>::open(&n3).map(drop);
        assert!(matches!(e, Err(OpenError::LayoutMismatch { .. })), "{e:?}");
        let e = Ring::<i32, Ix2>::open(&n2).map(drop);
        assert!(matches!(e, Err(OpenError::LayoutMismatch { .. })), "{e:?}");
        drop(Ring::<f32, Ix3>::open(&n3).unwrap());
        drop(Ring::<f32>::open(&n2).unwrap());

        let ring = Ring::<f32, Ix2>::open(&n2).unwrap();
        assert_eq!(ring.info().max_shape, [8, 16]);
        let mut w = ring.writer().unwrap();
        for k in 0..N {
            let (r, c) = shape_of(k);
            if k % 2 == 0 {
                let mut s = w.reserve().unwrap();
                s.set_shape(&[r, c]).unwrap();
                // Wrong rank and too large are refused and leave the shape alone.
                assert!(matches!(
                    s.set_shape(&[2, 2, 2]),
                    Err(ShapeError::WrongRank { .. })
                ));
                assert!(matches!(
                    s.set_shape(&[9, 1]),
                    Err(ShapeError::TooLarge { .. })
                ));
                assert_eq!(s.shape(), &[r, c]);
                {
                    let mut v: ndarray::ArrayViewMut2<'_, f32> = s.view_mut();
                    assert_eq!(v.dim(), (r, c));
                    for i in 0..r {
                        for j in 0..c {
                            v[[i, j]] = value(k, i, j);
                        }
                    }
                }
                s.set_tag(k + 100);
                assert_eq!(s.commit(), k);
            } else {
                let a = ndarray::Array2::from_shape_fn((r, c), |(i, j)| value(k, i, j));
                assert_eq!(w.send(&a.view()).unwrap(), k);
            }
        }
        0
    });

    for k in 0..N {
        let f = reader.recv_timeout(PATIENCE).unwrap();
        let (r, c) = shape_of(k);
        assert_eq!(f.seq(), k);
        let v: ArrayView2<'_, f32> = f.view();
        assert_eq!(v.dim(), (r, c), "frame {k}");
        assert_eq!(f.dim(), (r, c), "deref to ArrayView2");
        for i in 0..r {
            for j in 0..c {
                assert_eq!(f[[i, j]], value(k, i, j), "frame {k} [{i}, {j}]");
            }
        }
        assert_eq!(f.tag(), if k % 2 == 0 { k + 100 } else { 0 });
    }
    assert!(matches!(
        reader.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    child.join_ok();
}

/// A frame whose shape has a zero dimension (an empty frame) goes through like any other.
#[test]
fn empty_frame_round_trip() {
    let name = unique_name("rt-empty");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u16>::create(&name)
        .shape([4, 8])
        .slots(2)
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    let n = name.clone();
    let child = fork_child(move || {
        let ring = Ring::<u16>::open(&n).unwrap();
        let mut w = ring.writer().unwrap();
        let mut s = w.reserve().unwrap();
        s.set_shape(&[0, 8]).unwrap();
        assert!(s.as_mut_slice().is_empty());
        s.set_tag(9);
        s.commit();
        let mut s = w.reserve().unwrap();
        s.as_mut_slice().fill(3);
        s.commit();
        0
    });
    let f = reader.recv_timeout(PATIENCE).unwrap();
    assert_eq!((f.seq(), f.shape(), f.tag()), (0, &[0usize, 8][..], 9));
    assert!(f.as_slice().is_empty());
    assert_eq!(f.len(), 0);
    // A shadowed guard is still alive: release the frame before taking the next one.
    drop(f);
    let f = reader.recv_timeout(PATIENCE).unwrap();
    assert_eq!((f.seq(), f.shape()), (1, &[4usize, 8][..]));
    assert!(f.as_slice().iter().all(|&x| x == 3));
    child.join_ok();
}
