"""One process: dtypes, modes, leases, errors, bad arguments."""

import gc
import os
import pickle
import selectors

import numpy as np
import pytest

import shmflow


@pytest.mark.parametrize("dtype", shmflow.DTYPES)
def test_every_dtype_round_trips_through_reserve_and_send(name, dtype):
    ring = shmflow.create(name, shape=(3, 5), dtype=dtype, slots=4)
    assert ring.dtype == np.dtype(dtype)
    r = ring.reader(max_held=2)
    w = ring.writer()
    data = np.frombuffer(os.urandom(15 * np.dtype(dtype).itemsize), dtype).reshape(3, 5)
    with w.reserve(tag=11) as a:
        assert a.dtype == np.dtype(dtype) and a.shape == (3, 5)
        a[...] = data
    assert w.send(data[::-1].copy(), tag=12) == 1
    with r.recv(timeout=5) as f1, r.recv(timeout=5) as f2:
        assert (f1.seq, f1.tag, f2.seq, f2.tag) == (0, 11, 1, 12)
        assert f1.array.dtype == np.dtype(dtype)
        assert f1.array.tobytes() == data.tobytes()
        assert f2.array.tobytes() == data[::-1].tobytes()
        assert not f1.array.flags.writeable
        assert f1.timestamp_ns > 0


def test_block_mode_back_pressure_waits_for_the_slowest_reader(name):
    ring = shmflow.create(name, shape=(8,), dtype=np.uint8, slots=3, mode="block")
    r = ring.reader()
    w = ring.writer()
    sent = 0
    while True:
        try:
            w.send(np.full(8, sent, np.uint8), timeout=0.05)
            sent += 1
        except shmflow.Timeout:
            break
        assert sent <= 3, "a lossless writer overran a reader that read nothing"
    assert sent >= 2
    with r.recv(timeout=5) as f:
        assert f.array[0] == 0
    # One slot was released: exactly one more frame fits.
    w.send(np.full(8, sent, np.uint8), timeout=5)
    with pytest.raises(shmflow.Timeout):
        w.send(np.zeros(8, np.uint8), timeout=0)
    got = [r.recv(timeout=5).array[0] for _ in range(sent)]
    assert got == list(range(1, sent + 1))


def test_drop_oldest_reader_counts_what_it_missed(name):
    ring = shmflow.create(name, shape=(4,), dtype=np.uint32, slots=4, mode="drop-oldest")
    r = ring.reader()
    w = ring.writer()
    for i in range(50):
        w.send(np.full(4, i, np.uint32), timeout=0)  # never waits
    del w  # the writer leaves: the reader drains, then Disconnected
    seen, missed = [], 0
    for f in r:
        seen.append(int(f.array[0]))
        missed += f.missed
    assert seen == sorted(seen) and seen[-1] == 49
    assert missed > 0
    assert len(seen) + missed == 50
    assert r.missed == missed


def test_recv_latest_skips_to_the_newest_frame(name):
    ring = shmflow.create(name, shape=(1,), dtype=np.int64, slots=8, mode="drop-oldest")
    r = ring.reader()
    w = ring.writer()
    for i in range(5):
        w.send(np.array([i]))
    with r.recv_latest(timeout=5) as f:
        assert f.array[0] == 4 and f.missed == 4
    with pytest.raises(shmflow.Timeout):
        r.recv(timeout=0)


def test_lease_rule_an_array_kept_past_its_with_block_keeps_its_frame_unchanged(name):
    ring = shmflow.create(name, shape=(1000,), dtype=np.uint16, slots=3, mode="drop-oldest")
    r = ring.reader(max_held=2)
    w = ring.writer()
    w.send(np.full(1000, 1, np.uint16))
    with r.recv(timeout=5) as f:
        kept = f.array
        view = kept[10:20]
    assert not f.held
    with pytest.raises(RuntimeError, match="released"):
        f.array
    # The writer laps the ring many times: the slot under `kept` is never reused.
    for i in range(2, 40):
        w.send(np.full(1000, i, np.uint16), timeout=5)
    assert (kept == 1).all() and (view == 1).all()
    assert r.held == 1
    assert ring.status()["readers"][0]["held"] == 1
    del kept
    assert r.held == 1  # `view` still refers to the frame
    del view
    gc.collect()
    assert r.held == 0
    with r.recv_latest(timeout=5) as f:
        assert f.array[0] == 39


def test_too_many_held_is_immediate_and_says_how_to_keep_data(name):
    ring = shmflow.create(name, shape=(4,), dtype=np.uint8, slots=4)
    r = ring.reader(max_held=1)
    w = ring.writer()
    w.send(np.zeros(4, np.uint8))
    w.send(np.ones(4, np.uint8))
    a = r.recv(timeout=5).array  # the Frame is gone, its array holds the slot
    with pytest.raises(shmflow.TooManyHeld, match=r"np\.array\(f\.array\)"):
        r.recv(timeout=None)  # immediate, even with no timeout
    copy = np.array(a)
    del a
    with r.recv(timeout=5) as f:
        assert (f.array == 1).all() and (copy == 0).all()


def test_the_natural_loops_hold_one_frame_at_a_time(name):
    ring = shmflow.create(name, shape=(2, 2), dtype=np.float32, slots=2)
    r = ring.reader(max_held=1)
    w = ring.writer()
    for i in range(1):
        w.send(np.full((2, 2), i, np.float32))
    total = 0.0
    for i, f in enumerate(r):
        total += float(f.array.sum())
        assert r.held == 1
        if i + 1 < 20:
            with w.reserve(timeout=5) as a:
                a[...] = i + 1
        else:
            break
    assert total == sum(4.0 * i for i in range(20))


def test_writer_array_is_read_only_after_commit_and_discarded_on_exception(name):
    ring = shmflow.create(name, shape=(6,), dtype=np.int32, slots=4)
    r = ring.reader()
    w = ring.writer()
    with w.reserve() as a:
        a[...] = 5
        a[1:3] += 1  # temporary views are fine
    for arr in (a,):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    with pytest.raises(ZeroDivisionError):
        with w.reserve() as b:
            b[...] = 9
            1 / 0
    assert not b.flags.writeable
    with r.recv(timeout=5) as f:
        assert list(f.array) == [5, 6, 6, 5, 5, 5]
    with pytest.raises(shmflow.Timeout):
        r.recv(timeout=0)  # the discarded frame was never published
    res = w.reserve(shape=(2,))
    res.array[...] = 3
    res.tag = 77
    assert res.commit() == 1
    with pytest.raises(RuntimeError):
        res.commit()
    with r.recv(timeout=5) as f:
        assert f.shape == (2,) and f.tag == 77 and list(f.array) == [3, 3]


def test_views_of_a_reserved_slot_that_outlive_it_stop_the_commit(name):
    ring = shmflow.create(name, shape=(6,), dtype=np.int32, slots=4)
    r = ring.reader()
    w = ring.writer()
    with pytest.raises(shmflow.SlotInUse, match="1 view"):
        with w.reserve() as a:
            a[...] = 1
            row = a[1:3]  # a writable view, alive after the block
    assert row.flags.writeable  # numpy cannot reach it: so the frame was not published
    with pytest.raises(shmflow.Timeout):
        r.recv(timeout=0)
    with pytest.raises(shmflow.AlreadyReserved, match="SlotInUse"):
        w.reserve(timeout=0)
    del row, a  # the slot goes back, unpublished
    with w.reserve(timeout=0) as a:
        a[...] = 2
    with r.recv(timeout=5) as f:
        assert f.seq == 0 and (f.array == 2).all()
    kept = []
    with pytest.raises(shmflow.SlotInUse, match="2 view"):
        with w.reserve() as a:
            kept.append(a.reshape(2, 3)[0])
            kept.append(a.view(np.uint32))
    del kept
    w.send(np.full(6, 3, np.int32), timeout=0)
    # Objects that hold the array itself rather than the view base: a memoryview, a view of
    # another ndarray type, as_strided, a second name.
    makers = [memoryview, lambda a: a.view(np.recarray), lambda a: a,
              lambda a: np.lib.stride_tricks.as_strided(a)]
    for make in makers:
        with pytest.raises(shmflow.SlotInUse):
            with w.reserve() as a:
                other = make(a)
        del other
    del a
    w.send(np.full(6, 4, np.int32), timeout=0)
    with r.recv(timeout=5) as f:
        assert f.array[0] == 3
    with r.recv(timeout=5) as f:
        assert f.array[0] == 4


def test_a_reservation_dropped_open_is_discarded_and_its_array_read_only(name):
    ring = shmflow.create(name, shape=(4,), dtype=np.uint8, slots=4)
    r = ring.reader()
    w = ring.writer()
    a = w.reserve().array  # the Reservation is gone at once
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1
    with pytest.raises(shmflow.Timeout):
        r.recv(timeout=0)
    w.send(np.ones(4, np.uint8), timeout=0)
    with r.recv(timeout=5) as f:
        assert f.seq == 0


def test_closing_a_writer_ends_the_stream_and_frees_its_entry(name):
    ring = shmflow.create(name, shape=(1,), dtype=np.uint8)
    r = ring.reader()
    with ring.writer() as w:
        w.send(np.array([7], np.uint8))
    assert "closed" in repr(w)
    with pytest.raises(RuntimeError, match="closed"):
        w.send(np.array([1], np.uint8))
    assert [int(f.array[0]) for f in r] == [7]  # the loop ends: the writer left
    w2 = ring.writer()  # its entry is free
    w2.close()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.recv(timeout=0)


def test_frames_kept_by_a_name_in_the_loop_and_after_break(name):
    ring = shmflow.create(name, shape=(2,), dtype=np.uint8, slots=8)
    r = ring.reader()  # the default max_held, 2
    w = ring.writer()
    for i in range(6):
        w.send(np.full(2, i, np.uint8), timeout=5)
    seen = []
    for f in r:
        img = f.array  # still holds this frame when the loop takes the next
        seen.append(int(img[0]))
        if len(seen) == 3:
            break
    del img
    with r.recv(timeout=5) as f:  # the frame the loop gave last is released first
        seen.append(int(f.array[0]))
    assert seen == [0, 1, 2, 3]
    r.close()
    one = ring.reader(max_held=1)
    w.send(np.full(2, 9, np.uint8), timeout=5)
    for f in one:
        break
    del f
    w.send(np.full(2, 10, np.uint8), timeout=5)
    with one.recv(timeout=5) as f:  # not TooManyHeld: the loop's frame was released
        assert f.array[0] == 10


def test_one_reservation_at_a_time(name):
    ring = shmflow.create(name, shape=(1,), dtype=np.uint8)
    w = ring.writer()
    res = w.reserve()
    with pytest.raises(shmflow.AlreadyReserved):
        w.reserve(timeout=0)
    res.discard()
    w.reserve(timeout=0).discard()


def test_fileno_becomes_readable_when_a_frame_arrives(name):
    ring = shmflow.create(name, shape=(1,), dtype=np.uint8)
    r = ring.reader()
    w = ring.writer()
    sel = selectors.DefaultSelector()
    sel.register(r.fileno(), selectors.EVENT_READ)
    with pytest.raises(shmflow.Timeout):
        r.recv(timeout=0)  # arms the fd
    w.send(np.array([42], np.uint8))
    assert sel.select(timeout=10), "the reader's fd did not become readable"
    with r.recv(timeout=0) as f:
        assert f.array[0] == 42


def test_errors_are_exception_classes_with_clear_messages(name):
    ring = shmflow.create(name, shape=(2, 3), dtype="uint8")
    with pytest.raises(shmflow.AlreadyExists) as e:
        shmflow.create(name, shape=(2, 3), dtype="uint8")
    assert isinstance(e.value, FileExistsError) and name in str(e.value)
    with pytest.raises(shmflow.NotFound):
        shmflow.open(name + "-missing")
    with pytest.raises(shmflow.Timeout):
        shmflow.open(name + "-missing", timeout=0.05)
    with pytest.raises(shmflow.InvalidName):
        shmflow.create("a/b", shape=(1,), dtype="uint8")
    with pytest.raises(ValueError, match="not supported"):
        shmflow.create(name + "x", shape=(1,), dtype=np.complex64)
    with pytest.raises(ValueError, match="non-native byte order"):
        shmflow.create(name + "x", shape=(1,), dtype=">u2")
    with pytest.raises(ValueError, match="mode"):
        shmflow.create(name + "x", shape=(1,), dtype="u1", mode="fast")
    with pytest.raises(ValueError):
        shmflow.create(name + "x", shape=(1 << 40, 1 << 40), dtype="u1")
    with pytest.raises(ValueError):
        ring.reader(max_held=100)
    w = ring.writer()
    with pytest.raises(shmflow.TooManyPeers):
        ring.writer()
    with pytest.raises(TypeError, match="uint8"):
        w.send(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        w.send(np.zeros((3, 2), np.uint8).T)
    with pytest.raises(ValueError, match="does not fit"):
        w.send(np.zeros((3, 3), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        w.send([1, 2, 3])
    with pytest.raises(ValueError):
        w.reserve(shape=(9, 9))
    with pytest.raises(ValueError, match="timeout"):
        ring.reader().recv(timeout=-1)
    for obj in (ring.reader(), w):
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(obj)
    assert all(issubclass(c, shmflow.Error) for c in (
        shmflow.NotFound, shmflow.Timeout, shmflow.WriterDied, shmflow.WrongProcess,
        shmflow.TooManyHeld, shmflow.LayoutMismatch, shmflow.PermissionDenied,
        shmflow.Disconnected))


def test_ring_handles_pickle_as_their_name_and_remove_on_exit(name):
    with shmflow.create(name, shape=(2,), dtype="f8", slots=4, mode="queue") as ring:
        other = pickle.loads(pickle.dumps(ring))
        assert (other.name, other.shape, other.dtype, other.slots, other.mode) == (
            name, (2,), np.dtype("f8"), 4, "queue")
        assert name in shmflow.list()
        assert "mode=\"queue\"" in repr(ring)
    assert name not in shmflow.list()


def test_a_dropped_creator_handle_removes_the_ring_unless_kept(name):
    ring = shmflow.create(name, shape=(2,), dtype="u1")
    del ring
    gc.collect()
    assert name not in shmflow.list()
    ring = shmflow.create(name, shape=(2,), dtype="u1", keep=True)
    del ring
    gc.collect()
    assert name in shmflow.list()
    shmflow.remove(name)
    with pytest.raises(shmflow.NotFound):
        shmflow.remove(name)


def test_wait_strategy_spin_option(name):
    ring = shmflow.create(name, shape=(1,), dtype=np.uint8)
    r = ring.reader(spin="busy")
    w = ring.writer(spin=0.0)
    w.send(np.array([1], np.uint8))
    with r.recv(timeout=5) as f:
        assert f.array[0] == 1
    with pytest.raises(shmflow.Timeout):
        r.recv(timeout=0.01)  # busy polling still honours the timeout
    with pytest.raises(ValueError, match="spin"):
        ring.reader(spin="fast")
    with pytest.raises(ValueError, match="spin"):
        ring.reader(spin=-1.0)
