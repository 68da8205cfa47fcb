//! Opening rings: every way `create`, `open` and `remove` can fail, each an error and never a
//! panic; segments that are foreign, truncated or corrupted (made with `std::fs` in
//! `/dev/shm`); attach limits with dead peers; file permissions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// The layout version this shmflow writes (docs/PROTOCOL.md).
const LAYOUT_VERSION: u32 = 3;

use common::*;
use ndarray::{Ix1, Ix2, Ix3, IxDyn};
use shmflow::{
    AttachError, Backpressure, CreateError, LayoutError, Mode, OpenError, Ring, MAX_DIMS,
};

// ------------------------------------------------------------------------------------ helpers

/// A small real ring (u8, [64, 64], 4 slots, block): its segment is 24 KiB.
fn small_ring(name: &str) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape([64, 64])
        .slots(4)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .unwrap()
}

/// The bytes of a freshly made real ring.
fn real_ring_bytes() -> Vec<u8> {
    let name = unique_name("open-src");
    let _g = RingGuard(name.clone());
    let ring = small_ring(&name);
    let bytes = std::fs::read(shm_path(&name)).unwrap();
    assert_eq!(bytes.len() as u64, ring.info().total_size);
    bytes
}

/// Header field offsets (see `Header` in src/ring/layout.rs and docs/PROTOCOL.md).
mod off {
    pub const MAGIC: usize = 0;
    pub const READY: usize = 8;
    pub const HEADER_SIZE: usize = 12;
    pub const LAYOUT_HASH: usize = 16;
    pub const TOTAL_SIZE: usize = 24;
    pub const DTYPE: usize = 32;
    pub const ELEM_SIZE: usize = 36;
    pub const NDIM: usize = 40;
    pub const MODE: usize = 44;
    pub const MAX_SHAPE: usize = 48;
    pub const SLOT_COUNT: usize = 112;
    pub const MAX_READERS: usize = 116;
    pub const MAX_WRITERS: usize = 120;
    pub const FLAGS: usize = 124;
    pub const SLOT_BYTES: usize = 128;
    pub const SLOT_STRIDE: usize = 136;
    pub const PEERS_OFFSET: usize = 144;
    pub const PEER_STRIDE: usize = 152;
    pub const META_OFFSET: usize = 160;
    pub const META_STRIDE: usize = 168;
    pub const PAYLOAD_OFFSET: usize = 176;
    pub const CREATOR_PID: usize = 184;
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The layout hash as docs/PROTOCOL.md defines it: FNV-1a 64 over the layout fields as u64 LE.
fn layout_hash(b: &[u8]) -> u64 {
    let mut words = vec![
        u64::from(get_u32(b, off::READY)),
        u64::from(get_u32(b, off::DTYPE)),
        u64::from(get_u32(b, off::ELEM_SIZE)),
        u64::from(get_u32(b, off::NDIM)),
        u64::from(get_u32(b, off::MODE)),
    ];
    for i in 0..MAX_DIMS {
        words.push(get_u64(b, off::MAX_SHAPE + 8 * i));
    }
    words.extend([
        u64::from(get_u32(b, off::SLOT_COUNT)),
        u64::from(get_u32(b, off::MAX_READERS)),
        u64::from(get_u32(b, off::MAX_WRITERS)),
        get_u64(b, off::SLOT_BYTES),
        get_u64(b, off::SLOT_STRIDE),
        get_u64(b, off::PEERS_OFFSET),
        get_u64(b, off::PEER_STRIDE),
        get_u64(b, off::META_OFFSET),
        get_u64(b, off::META_STRIDE),
        get_u64(b, off::PAYLOAD_OFFSET),
        get_u64(b, off::TOTAL_SIZE),
    ]);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for byte in w.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A segment file written by hand; removed on drop.
struct Fake {
    name: String,
    _g: RingGuard,
}

impl Fake {
    fn new(tag: &str) -> Fake {
        let name = unique_name(tag);
        Fake {
            _g: RingGuard(name.clone()),
            name,
        }
    }

    /// Replaces the file's content and opens it as a `u8` ring.
    fn open_with(&self, bytes: &[u8]) -> Result<Ring<u8>, OpenError> {
        std::fs::write(shm_path(&self.name), bytes).unwrap();
        Ring::<u8>::open(&self.name)
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

// -------------------------------------------------------------------------------- names

#[test]
fn open_and_remove_of_a_missing_ring_are_not_found() {
    let name = unique_name("open-missing");
    let e = Ring::<u8>::open(&name).unwrap_err();
    assert!(matches!(e, OpenError::NotFound { .. }), "{e:?}");
    assert!(e.is_not_found());
    assert!(matches!(
        Ring::<u8>::remove(&name),
        Err(OpenError::NotFound { .. })
    ));
    assert!(!shm_path(&name).exists());
}

#[test]
fn bad_names_are_refused_by_create_open_and_remove() {
    let long = "x".repeat(300);
    let too_long = "y".repeat(201);
    let bad = [
        "", "a/b", "/a", "..", ".", ".hidden", "a\0b", "a b", "ring\n", "ü", &long, &too_long,
    ];
    let before = shmflow::list().unwrap();
    for name in bad {
        let c = Ring::<u8>::create(name).shape([4]).build();
        assert!(
            matches!(c, Err(CreateError::InvalidName(_))),
            "create {name:?}: {c:?}"
        );
        let o = Ring::<u8>::open(name);
        assert!(
            matches!(o, Err(OpenError::InvalidName(_))),
            "open {name:?}: {o:?}"
        );
        let r = Ring::<u8>::remove(name);
        assert!(
            matches!(r, Err(OpenError::InvalidName(_))),
            "remove {name:?}: {r:?}"
        );
    }
    // Nothing was created for any of them.
    let after = shmflow::list().unwrap();
    assert!(after
        .iter()
        .all(|n| before.contains(n) || n.starts_with("t-")));
    // The longest valid name (200 bytes) works.
    let max = format!("{}-{}", unique_name("open-max"), "z".repeat(200))[..200].to_owned();
    let _g = RingGuard(max.clone());
    let ring = Ring::<u8>::create(&max).shape([4]).build().unwrap();
    Ring::<u8>::open(&max).unwrap();
    drop(ring);
    assert!(!shm_path(&max).exists());
}

#[test]
fn create_twice_is_already_exists_and_keeps_the_first() {
    let name = unique_name("open-twice");
    let _g = RingGuard(name.clone());
    let ring = small_ring(&name);
    for shape in [[64, 64], [8, 8]] {
        let e = Ring::<u8>::create(&name).shape(shape).build();
        assert!(
            matches!(&e, Err(CreateError::AlreadyExists { name: n }) if *n == name),
            "{e:?}"
        );
    }
    let e = Ring::<f32>::create(&name).shape([2]).build();
    assert!(matches!(e, Err(CreateError::AlreadyExists { .. })), "{e:?}");
    // The failed creates neither removed nor damaged the first ring.
    assert!(shm_path(&name).exists());
    let other = Ring::<u8>::open(&name).unwrap();
    let mut r = other.reader().unwrap();
    let mut w = ring.writer().unwrap();
    let mut s = w.try_reserve().unwrap();
    fill(s.seq(), s.as_mut_bytes());
    s.commit();
    let f = r.try_recv().unwrap();
    assert!(check(f.seq(), f.as_bytes()));
}

// -------------------------------------------------------------------- foreign and broken files

#[test]
fn a_file_that_is_not_a_ring_is_refused() {
    let fake = Fake::new("open-foreign");
    let seed = u64::from(std::process::id()) << 20 | 0x9e37;
    for (i, len) in [4096, 8192, 100_000].into_iter().enumerate() {
        let e = fake.open_with(&noise(len, seed + i as u64)).unwrap_err();
        assert!(
            matches!(e, OpenError::NotARing { .. } | OpenError::Corrupted { .. }),
            "random {len} bytes: {e:?}"
        );
    }
    let text = "not a ring, just text\n".repeat(400);
    let e = fake.open_with(text.as_bytes()).unwrap_err();
    assert!(matches!(e, OpenError::NotARing { .. }), "{e:?}");
    // Right magic and version, garbage after.
    let mut b = noise(8192, seed ^ 0xabcdef);
    b[..8].copy_from_slice(b"SHMFLOW\0");
    put_u32(&mut b, off::READY, LAYOUT_VERSION);
    let e = fake.open_with(&b).unwrap_err();
    assert!(matches!(e, OpenError::Corrupted { .. }), "{e:?}");
}

#[test]
fn truncated_segments_are_truncated() {
    let bytes = real_ring_bytes();
    let total = bytes.len() as u64;
    let fake = Fake::new("open-trunc");
    for len in [bytes.len() - 1, bytes.len() - 4096, bytes.len() / 2, 4096] {
        let e = fake.open_with(&bytes[..len]).unwrap_err();
        match e {
            OpenError::Truncated { size, expected, .. } => {
                assert_eq!((size, expected), (len as u64, total));
            }
            e => panic!("{len} of {total} bytes: {e:?}"),
        }
    }
    // Shorter than the header page.
    for len in [1, 8, 256, 4095] {
        let e = fake.open_with(&bytes[..len]).unwrap_err();
        assert!(
            matches!(e, OpenError::Truncated { size, .. } if size == len as u64),
            "{len} bytes: {e:?}"
        );
    }
    // The full copy itself opens (so the failures above are about the length).
    let ring = fake
        .open_with(&bytes)
        .expect("an exact copy of a ring opens");
    assert_eq!(ring.info().total_size, total);
}

#[test]
fn a_consistent_header_claiming_more_than_the_file_is_truncated() {
    let mut b = real_ring_bytes();
    assert_eq!(
        layout_hash(&b),
        get_u64(&b, off::LAYOUT_HASH),
        "the test's hash matches the library's"
    );
    // Claim 64 slots with every derived field and the hash recomputed.
    let slots = 64u64;
    let stride = get_u64(&b, off::SLOT_STRIDE);
    let peers = u64::from(get_u32(&b, off::MAX_READERS) + get_u32(&b, off::MAX_WRITERS));
    let meta = 4096 + peers * get_u64(&b, off::PEER_STRIDE);
    let payload = (meta + slots * get_u64(&b, off::META_STRIDE)).div_ceil(4096) * 4096;
    let total = payload + slots * stride;
    put_u32(&mut b, off::SLOT_COUNT, slots as u32);
    put_u64(&mut b, off::META_OFFSET, meta);
    put_u64(&mut b, off::PAYLOAD_OFFSET, payload);
    put_u64(&mut b, off::TOTAL_SIZE, total);
    let h = layout_hash(&b);
    put_u64(&mut b, off::LAYOUT_HASH, h);
    let fake = Fake::new("open-claim");
    let e = fake.open_with(&b).unwrap_err();
    match e {
        OpenError::Truncated { size, expected, .. } => {
            assert_eq!((size, expected), (b.len() as u64, total));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_changed_version_word_is_version_mismatch() {
    let bytes = real_ring_bytes();
    assert_eq!(get_u32(&bytes, off::READY), LAYOUT_VERSION);
    let fake = Fake::new("open-version");
    for v in [1, LAYOUT_VERSION + 1, 0x81, 0xFFFF_FFFF] {
        let mut b = bytes.clone();
        put_u32(&mut b, off::READY, v);
        match fake.open_with(&b).unwrap_err() {
            OpenError::VersionMismatch {
                found, expected, ..
            } => assert_eq!((found, expected), (v, LAYOUT_VERSION)),
            e => panic!("version {v}: {e:?}"),
        }
    }
}

/// Flips bits of every validated header byte: each change is caught.
#[test]
fn any_flipped_header_byte_is_refused() {
    let bytes = real_ring_bytes();
    let fake = Fake::new("open-flip");
    let mut checked = 0;
    for at in 0..off::CREATOR_PID {
        if (off::FLAGS..off::FLAGS + 4).contains(&at) {
            continue; // not part of the layout
        }
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[at] ^= bit;
            if get_u32(&b, off::READY) == 0 {
                continue; // "being initialised": tested below, takes a second
            }
            let e = fake.open_with(&b).unwrap_err();
            let ok = match at {
                off::MAGIC..8 => matches!(e, OpenError::NotARing { .. }),
                off::READY..12 => matches!(e, OpenError::VersionMismatch { .. }),
                _ => matches!(e, OpenError::Corrupted { .. }),
            };
            assert!(ok, "byte {at} ^ {bit:#x}: {e:?}");
            checked += 1;
        }
    }
    assert!(checked > 300);
    // The named examples from the protocol: slot count, shape, hash, total size.
    for (at, v) in [
        (off::SLOT_COUNT, 5u64),
        (off::SLOT_COUNT, 0),
        (off::MAX_SHAPE, 65),
        (off::MAX_SHAPE + 8 * 5, 7),
        (off::NDIM, 9),
        (off::NDIM, 0),
        (off::MODE, 7),
        (off::DTYPE, 0xdead),
        (off::ELEM_SIZE, 3),
        (off::HEADER_SIZE, 4097),
        (off::PEER_STRIDE, 64),
        (off::META_STRIDE, 256),
        (off::SLOT_BYTES, 1),
    ] {
        let mut b = bytes.clone();
        if matches!(
            at,
            off::MAX_SHAPE..112 | off::PEER_STRIDE | off::META_STRIDE
        ) || at == off::SLOT_BYTES
        {
            put_u64(&mut b, at, v);
        } else {
            put_u32(&mut b, at, v as u32);
        }
        let e = fake.open_with(&b).unwrap_err();
        assert!(
            matches!(e, OpenError::Corrupted { .. }),
            "{at} = {v}: {e:?}"
        );
    }
}

#[test]
fn wrong_dtype_is_layout_mismatch() {
    let name = unique_name("open-dtype");
    let _g = RingGuard(name.clone());
    let _ring = small_ring(&name);
    assert!(matches!(
        Ring::<f32>::open(&name),
        Err(OpenError::LayoutMismatch { .. })
    ));
    assert!(matches!(
        Ring::<i8>::open(&name),
        Err(OpenError::LayoutMismatch { .. })
    ));
    assert!(matches!(
        Ring::<u16>::open(&name),
        Err(OpenError::LayoutMismatch { .. })
    ));
    let name2 = unique_name("open-dtype-f32");
    let _g2 = RingGuard(name2.clone());
    let _f = Ring::<f32>::create(&name2).shape([3]).build().unwrap();
    match Ring::<u32>::open(&name2) {
        Err(OpenError::LayoutMismatch {
            expected, found, ..
        }) => {
            assert!(expected.contains("u32"), "{expected}");
            assert!(found.contains("f32"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    Ring::<f32>::open(&name2).unwrap();
}

#[test]
fn wrong_rank_is_layout_mismatch() {
    let name = unique_name("open-rank");
    let _g = RingGuard(name.clone());
    let _ring = small_ring(&name);
    assert!(matches!(
        Ring::<u8, Ix3>::open(&name),
        Err(OpenError::LayoutMismatch { .. })
    ));
    assert!(matches!(
        Ring::<u8, Ix1>::open(&name),
        Err(OpenError::LayoutMismatch { .. })
    ));
    let two = Ring::<u8, Ix2>::open(&name).unwrap();
    assert_eq!(two.info().max_shape, [64, 64]);
    Ring::<u8, IxDyn>::open(&name).unwrap();
}

#[test]
fn an_empty_or_uninitialised_segment_is_not_ready() {
    let fake = Fake::new("open-empty");
    let t = Instant::now();
    let e = fake.open_with(&[]).unwrap_err();
    assert!(matches!(e, OpenError::NotReady { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // Sized but still zero (the creator died before writing the header), or a real header
    // whose ready word was never stored: open waits about a second, then gives up.
    let mut unready = real_ring_bytes();
    put_u32(&mut unready, off::READY, 0);
    for b in [vec![0u8; 8192], unready] {
        let t = Instant::now();
        let e = fake.open_with(&b).unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, OpenError::NotReady { .. }), "{e:?}");
        assert!(took >= Duration::from_millis(900), "gave up after {took:?}");
        assert!(took < Duration::from_secs(3), "waited {took:?}");
    }
}

#[test]
fn open_within_chooses_the_wait_for_an_uninitialised_segment() {
    let fake = Fake::new("open-within");
    let mut unready = real_ring_bytes();
    put_u32(&mut unready, off::READY, 0);
    for b in [Vec::new(), vec![0u8; 8192], unready] {
        std::fs::write(shm_path(&fake.name), &b).unwrap();
        let t = Instant::now();
        let e = Ring::<u8>::open_within(&fake.name, Duration::ZERO).unwrap_err();
        assert!(matches!(e, OpenError::NotReady { .. }), "{e:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "waited {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let e = Ring::<u8>::open_within(&fake.name, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, OpenError::NotReady { .. }), "{e:?}");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200), "gave up after {took:?}");
        assert!(took < Duration::from_secs(2), "waited {took:?}");
    }
    // A ready ring opens at once either way.
    let bytes = real_ring_bytes();
    std::fs::write(shm_path(&fake.name), &bytes).unwrap();
    Ring::<u8>::open_within(&fake.name, Duration::ZERO).expect("a complete ring opens");
}

// ------------------------------------------------------------------------- invalid layouts

#[test]
fn invalid_layouts_are_refused_and_leave_nothing() {
    let bcast = Mode::Broadcast(Backpressure::Block);
    let cases: Vec<(&str, Result<Ring<u8>, CreateError>)> = vec![
        ("no shape", Ring::<u8>::create(&unique_name("bad")).build()),
        (
            "zero dim",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([4, 0, 3])
                .build(),
        ),
        (
            "0 slots",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([4])
                .slots(0)
                .build(),
        ),
        (
            "too many slots",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([4])
                .slots(shmflow::MAX_SLOTS + 1)
                .build(),
        ),
        (
            "9 dims",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([2; 9])
                .build(),
        ),
        (
            "broadcast with 2 writers",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([4])
                .mode(bcast)
                .max_writers(2)
                .build(),
        ),
        (
            "no readers",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([4])
                .max_readers(0)
                .build(),
        ),
        (
            "too many peers",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([4])
                .mode(Mode::Queue)
                .max_readers(1000)
                .max_writers(100)
                .build(),
        ),
        (
            "absurd shape",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([usize::MAX, usize::MAX])
                .build(),
        ),
        (
            "16 TiB",
            Ring::<u8>::create(&unique_name("bad"))
                .shape([1 << 20, 1 << 20])
                .slots(64)
                .build(),
        ),
    ];
    for (what, r) in cases {
        assert!(matches!(r, Err(CreateError::Layout(_))), "{what}: {r:?}");
    }
    let e = Ring::<f64>::create(&unique_name("bad"))
        .shape([usize::MAX / 4])
        .build()
        .unwrap_err();
    assert!(
        matches!(e, CreateError::Layout(LayoutError::TooLarge { .. })),
        "{e:?}"
    );
    let e = Ring::<u8, Ix2>::create(&unique_name("bad"))
        .shape([4, 4, 4])
        .build()
        .unwrap_err();
    assert!(
        matches!(e, CreateError::Layout(LayoutError::BadRank(3))),
        "{e:?}"
    );
    // No segment of this process's "bad" rings exists.
    let prefix = format!("t-bad-{}-", std::process::id());
    let left: Vec<_> = shmflow::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ------------------------------------------------------------------------------ attach limits

#[test]
fn reader_limit_frees_up_when_a_reader_process_dies() {
    let name = unique_name("open-rlimit");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([16])
        .max_readers(2)
        .build()
        .unwrap();
    let sig = Pipe::new();
    let reader_child = || {
        fork_child(|| {
            let ring = Ring::<u8>::open(&name).unwrap();
            let _r = ring.reader().unwrap();
            sig.send(b'R');
            sleep_forever();
        })
    };
    let a = reader_child();
    sig.expect(b'R');
    let b = reader_child();
    sig.expect(b'R');
    let e = ring.reader().unwrap_err();
    assert!(matches!(e, AttachError::TooManyReaders { max: 2 }), "{e:?}");
    assert_eq!(ring.status().readers.len(), 2);

    kill_and_reap(a);
    let r = ring.reader().expect("the dead reader's entry is reclaimed");
    let e = ring.reader().unwrap_err();
    assert!(matches!(e, AttachError::TooManyReaders { max: 2 }), "{e:?}");
    let pids: Vec<u32> = ring.status().readers.iter().map(|p| p.pid).collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.contains(&(b.pid as u32)) && pids.contains(&std::process::id()));
    drop(r);
    let _again = ring.reader().expect("a detached reader frees its entry");
    kill_and_reap(b);
}

#[test]
fn writer_limit_frees_up_when_the_writer_process_dies() {
    let name = unique_name("open-wlimit");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([16])
        .mode(Mode::Broadcast(Backpressure::DropOldest))
        .build()
        .unwrap();
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let _w = ring.writer().unwrap();
        sig.send(b'W');
        sleep_forever();
    });
    sig.expect(b'W');
    let e = ring.writer().unwrap_err();
    assert!(matches!(e, AttachError::TooManyWriters { max: 1 }), "{e:?}");
    kill_and_reap(child);
    let mut w = ring.writer().expect("the dead writer's entry is reclaimed");
    let mut r = ring.reader().unwrap();
    let mut s = w.try_reserve().unwrap();
    fill(s.seq(), s.as_mut_bytes());
    s.commit();
    let f = r.try_recv().unwrap();
    assert!(check(f.seq(), f.as_bytes()));
}

// -------------------------------------------------------------------------------- permissions

fn mode_of(name: &str) -> u32 {
    std::fs::metadata(shm_path(name))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn segments_are_0600_unless_asked_otherwise() {
    let a = unique_name("open-perm");
    let _ga = RingGuard(a.clone());
    let _ra = small_ring(&a);
    assert_eq!(mode_of(&a), 0o600);
    for mode in [0o640, 0o660, 0o644] {
        let b = unique_name("open-perm");
        let _gb = RingGuard(b.clone());
        let _rb = Ring::<u8>::create(&b)
            .shape([4])
            .permissions(mode)
            .build()
            .unwrap();
        assert_eq!(mode_of(&b), mode);
    }
}

/// Runs `f` in a child that dropped root for nobody (uid and gid 65534, no groups); returns
/// its exit code (2 if it could not change user).
fn as_nobody(f: impl FnOnce() -> i32) -> Exit {
    as_nobody_in(&[], f)
}

/// [`as_nobody`] with supplementary `groups`.
fn as_nobody_in(groups: &[libc::gid_t], f: impl FnOnce() -> i32) -> Exit {
    let mut child = fork_child(|| {
        // SAFETY: plain credential syscalls in a single-threaded forked child; `groups` is a
        // valid slice of its length.
        let ok = unsafe {
            libc::setgroups(groups.len(), groups.as_ptr()) == 0
                && libc::setgid(65534) == 0
                && libc::setuid(65534) == 0
        };
        if !ok {
            return 2;
        }
        f()
    });
    child.wait_timeout(Duration::from_secs(20))
}

#[test]
fn another_user_is_denied_a_0600_ring() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to another user");
        return;
    }
    let name = unique_name("open-denied");
    let _g = RingGuard(name.clone());
    let _ring = small_ring(&name);
    let code = as_nobody(|| {
        let open = Ring::<u8>::open(&name);
        if !matches!(open, Err(OpenError::PermissionDenied { .. })) {
            eprintln!("open as nobody: {open:?}");
            return 3;
        }
        // /dev/shm is sticky: nobody may not remove root's segment either.
        let rm = Ring::<u8>::remove(&name);
        if !matches!(rm, Err(OpenError::PermissionDenied { .. })) {
            eprintln!("remove as nobody: {rm:?}");
            return 4;
        }
        0
    });
    assert_eq!(code, Exit::Code(0));
    assert!(shm_path(&name).exists());
    Ring::<u8>::open(&name).expect("the owner still opens it");

    // Shared with everyone, the other user may open it and attach.
    let shared = unique_name("open-shared");
    let _g2 = RingGuard(shared.clone());
    let _ring2 = Ring::<u8>::create(&shared)
        .shape([4])
        .permissions(0o666)
        .build()
        .unwrap();
    let code = as_nobody(|| match Ring::<u8>::open(&shared) {
        Ok(r) if r.reader().is_ok() => 0,
        other => {
            eprintln!("open 0666 as nobody: {other:?}");
            3
        }
    });
    assert_eq!(code, Exit::Code(0));
}

#[test]
fn group_members_share_a_0660_ring_others_are_denied() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to another user");
        return;
    }
    const GROUP: u32 = 4242;
    let name = unique_name("open-group");
    let _g = RingGuard(name.clone());
    let _ring = Ring::<u8>::create(&name)
        .shape([4])
        .permissions(0o660)
        .group(GROUP)
        .build()
        .unwrap();
    let meta = std::fs::metadata(shm_path(&name)).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), GROUP);
    assert_eq!(mode_of(&name), 0o660);
    // A member of the group (not the owner) opens the ring and attaches both ends.
    let member = as_nobody_in(&[GROUP], || match Ring::<u8>::open(&name) {
        Ok(r) if r.reader().is_ok() && r.writer().is_ok() => 0,
        other => {
            eprintln!("open 0660 as a group member: {other:?}");
            3
        }
    });
    assert_eq!(member, Exit::Code(0));
    // Someone outside the group is denied.
    let outsider = as_nobody(|| match Ring::<u8>::open(&name) {
        Err(OpenError::PermissionDenied { .. }) => 0,
        other => {
            eprintln!("open 0660 as an outsider: {other:?}");
            3
        }
    });
    assert_eq!(outsider, Exit::Code(0));
    // A creator that is not in the group may not give the ring to it, and leaves nothing.
    let refused = unique_name("open-group");
    let _g2 = RingGuard(refused.clone());
    let code = as_nobody(|| {
        match Ring::<u8>::create(&refused)
            .shape([4])
            .permissions(0o660)
            .group(GROUP)
            .build()
        {
            Err(CreateError::GroupDenied { gid: GROUP, .. }) if !shm_path(&refused).exists() => 0,
            other => {
                eprintln!("create for a foreign group: {:?}", other.map(|_| ()));
                3
            }
        }
    });
    assert_eq!(code, Exit::Code(0));
}

// ------------------------------------------------------------------------------- rendezvous

/// Issue 11 finding: a reader started before its writer had to poll `NotFound` by hand
/// (`open_within` returns at once for a missing name). `Ring::open_wait` waits for the ring
/// to appear; a ring that never appears is `OpenError::Timeout`, not a hang.
#[test]
fn reader_started_before_its_writer_waits_with_open_wait() {
    let name = unique_name("open-wait");
    // The reader's process starts first, the creator 100 ms later.
    let reader = fork_child({
        let name = name.clone();
        move || {
            let Ok(ring) = Ring::<u8>::open_wait(&name, Duration::from_secs(20)) else {
                return 2;
            };
            let Ok(mut r) = ring.reader() else { return 3 };
            match r.recv_timeout(Duration::from_secs(20)) {
                Ok(f) if f.as_slice().iter().all(|&b| b == 7) => 0,
                _ => 4,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let ring = small_ring(&name);
    let mut w = ring.writer().unwrap();
    // Issue 11 finding: a writer could wait for N readers only by polling `status()`.
    assert_eq!(w.wait_for_readers(1, Duration::from_secs(20)).unwrap(), 1);
    w.send(&ndarray::ArrayD::from_elem(vec![64, 64], 7u8))
        .unwrap();
    let mut reader = reader;
    assert_eq!(reader.wait_timeout(Duration::from_secs(30)), Exit::Code(0));

    let t = Instant::now();
    let missing = unique_name("open-wait-missing");
    match Ring::<u8>::open_wait(&missing, Duration::from_millis(50)) {
        Err(OpenError::Timeout { name, waited }) => {
            assert_eq!(name, missing);
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    // Other errors come at once: a wrong dtype is not waited on.
    assert!(matches!(
        Ring::<f32>::open_wait(&name, Duration::from_secs(20)),
        Err(OpenError::LayoutMismatch { .. })
    ));
}

/// `wait_for_readers` counts readers that finished attaching, and times out with the count.
#[test]
fn wait_for_readers_times_out_with_the_count() {
    let name = unique_name("wait-readers");
    let ring = small_ring(&name);
    let w = ring.writer().unwrap();
    let _r = ring.reader().unwrap();
    let e = w
        .wait_for_readers(2, Duration::from_millis(30))
        .unwrap_err();
    assert_eq!((e.wanted, e.attached), (2, 1));
    assert!(e.waited >= Duration::from_millis(30));
    assert_eq!(w.wait_for_readers(0, Duration::ZERO).unwrap(), 1);
}
