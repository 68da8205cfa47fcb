"""Several processes: queue delivery, crashes, Ctrl-C, fork, spawn, leaks."""

import multiprocessing as mp
import os
import signal
import sys
import time

import numpy as np
import pytest

import shmflow
from conftest import python_child, read_line, wait_until


QUEUE_READER = """
import sys, shmflow
ring = shmflow.open(sys.argv[1], timeout=20)
r = ring.reader()
print("attached", flush=True)
seen = []
for f in r:
    assert int(f.array[0]) == f.tag
    seen.append(f.tag)
print(" ".join(map(str, seen)), flush=True)
"""


def test_queue_delivers_each_frame_exactly_once_across_three_processes(name):
    ring = shmflow.create(name, shape=(64,), dtype=np.int64, slots=4, mode="queue")
    readers = [python_child(QUEUE_READER, name) for _ in range(2)]
    for p in readers:
        read_line(p, "attached")
    w = ring.writer()
    n = 2000
    for i in range(n):
        with w.reserve(timeout=20, tag=i) as a:
            a[...] = i
    del w  # the readers drain the queue, then see the writer gone
    got = []
    for p in readers:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        line = out.strip().splitlines()[-1] if out.strip() else ""
        got.append([int(x) for x in line.split()] if line and line != "attached" else [])
    assert sorted(got[0] + got[1]) == list(range(n)), "a frame was lost or delivered twice"
    assert all(g == sorted(g) for g in got)


WRITER_THEN_HANG = """
import sys, time, numpy as np, shmflow
ring = shmflow.create(sys.argv[1], shape=(16,), dtype=np.uint8, slots=4, keep=True)
w = ring.writer()
w.wait_for_readers(1, timeout=20)
for i in range(3):
    w.send(np.full(16, i, np.uint8))
print("sent", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_writer_ends_the_stream_with_writer_died(name):
    child = python_child(WRITER_THEN_HANG, name)
    try:
        r = shmflow.open(name, timeout=20).reader()
        read_line(child, "sent")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        got = []
        with pytest.raises(shmflow.WriterDied, match=r"pid \d+\) died after 3 frames"):
            for f in r:
                got.append(int(f.array[0]))
        assert got == [0, 1, 2]  # every committed frame first
    finally:
        child.kill()
        child.wait()


READER_HOLDS_A_FRAME = """
import sys, time, shmflow
r = shmflow.open(sys.argv[1], timeout=20).reader()
print("attached", flush=True)
f = r.recv(timeout=20)
print("holding", f.seq, flush=True)
time.sleep(60)
"""


def test_a_reader_sigkilled_while_holding_a_frame_does_not_stop_the_writer(name):
    ring = shmflow.create(name, shape=(1024,), dtype=np.uint8, slots=2, mode="block")
    w = ring.writer()
    child = python_child(READER_HOLDS_A_FRAME, name)
    try:
        read_line(child, "attached")
        w.send(np.zeros(1024, np.uint8), timeout=20)
        read_line(child, "holding 0")
        with pytest.raises(shmflow.Timeout):
            for i in range(3):  # the live reader holds frame 0 and reads no more
                w.send(np.zeros(1024, np.uint8), timeout=0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # The dead reader is found and its frame reclaimed: the writer goes on.
        for i in range(50):
            w.send(np.full(1024, i, np.uint8), timeout=20)
        assert ring.status()["readers"] == []
    finally:
        child.kill()
        child.wait()


BLOCKED_IN_RECV = """
import sys, time, shmflow
r = shmflow.open(sys.argv[1], timeout=20).reader()
print("waiting", flush=True)
try:
    r.recv()          # no timeout: only Ctrl-C ends it
except KeyboardInterrupt:
    print("interrupted", time.time(), flush=True)
"""


def test_ctrl_c_interrupts_a_blocking_recv(name):
    ring = shmflow.create(name, shape=(4,), dtype=np.uint8)
    _w = ring.writer()  # attached and silent: recv waits for ever
    child = python_child(BLOCKED_IN_RECV, name)
    read_line(child, "waiting")
    time.sleep(0.2)  # well inside recv's wait
    sent = time.time()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=10)
    assert child.returncode == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("interrupted"), out + err
    # A bound on correctness (the wait wakes for signals), not a speed figure.
    assert float(line.split()[1]) - sent < 2.0


def test_endpoints_made_before_fork_raise_wrong_process_in_the_child(name):
    ring = shmflow.create(name, shape=(4,), dtype=np.uint8, slots=4)
    r = ring.reader()
    w = ring.writer()
    w.send(np.ones(4, np.uint8))
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 0
        try:
            for call in (lambda: r.recv(timeout=0), lambda: w.reserve(timeout=0),
                         lambda: w.send(np.ones(4, np.uint8), timeout=0), ring.reader,
                         ring.writer):
                try:
                    call()
                    code |= 1
                except shmflow.WrongProcess as e:
                    if "open the ring in the child" not in str(e):
                        code |= 2
            # The connect-after-fork rule: opening the ring here works.
            r2 = shmflow.open(name).reader()
            del r2
        except BaseException:
            code |= 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, f"child status {os.WEXITSTATUS(status)}"
    # The parent's endpoints are untouched by the child's use and exit.
    with r.recv(timeout=5) as f:
        assert (f.array == 1).all()
    w.send(np.full(4, 2, np.uint8), timeout=5)
    assert len(ring.status()["readers"]) == 1


def _spawned_reader(ring, count, results):
    r = ring.reader()  # `ring` arrived pickled as its name, and was opened here
    results.put("attached")
    total = 0
    for _ in range(count):
        with r.recv(timeout=20) as f:
            total += int(f.array.sum())
    results.put(total)


def test_pickled_ring_handles_open_the_ring_in_spawn_children(name):
    ring = shmflow.create(name, shape=(10,), dtype=np.int32, slots=4)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    p = ctx.Process(target=_spawned_reader, args=(ring, 20, results))
    p.start()
    assert results.get(timeout=60) == "attached"
    w = ring.writer()
    for i in range(20):
        w.send(np.full(10, i, np.int32), timeout=20)
    assert results.get(timeout=60) == sum(10 * i for i in range(20))
    p.join(timeout=30)
    assert p.exitcode == 0


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _shm_entries():
    return sorted(e for e in os.listdir("/dev/shm") if "pytest-test_leak" in e)


def test_leak_check_10000_cycles_leave_no_fds_or_segments(name):
    before_fds = _open_fds()
    w_data = np.arange(16, dtype=np.uint8)
    for i in range(10_000):
        n = f"{name}-{i % 3}"
        ring = shmflow.create(n, shape=(16,), dtype=np.uint8, slots=2)
        r = ring.reader()
        w = ring.writer()
        w.send(w_data)
        with r.recv(timeout=5) as f:
            assert f.array[15] == 15
        del r, w, ring, f
    assert _shm_entries() == [], "segments left behind"
    after = _open_fds()
    assert after <= before_fds, f"{after - before_fds} fds leaked"


def test_mpire_example_runs_a_worker_pool_on_a_queue_ring():
    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(here, "..", "examples", "mpire_pool.py")
    proc = python_child(open(example).read(), "--frames", "60", "--workers", "2")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "60 frames" in out and "mismatch" not in out, out
