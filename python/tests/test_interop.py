"""The same rings from Python and from the `shmflow` command, byte for byte."""

import hashlib
import os
import subprocess
import threading

import numpy as np
import pytest

import shmflow

RUST_NAMES = {"uint8": "u8", "int8": "i8", "uint16": "u16", "int16": "i16", "uint32": "u32",
              "int32": "i32", "uint64": "u64", "int64": "i64", "float32": "f32",
              "float64": "f64"}
SHAPE = (24, 32, 3)
FRAMES = 12


def frames_of(dtype, n, seed):
    rng = np.random.default_rng(seed)
    size = int(np.prod(SHAPE)) * np.dtype(dtype).itemsize
    return [rng.bytes(size) for _ in range(n)]


@pytest.mark.parametrize("dtype", shmflow.DTYPES)
def test_a_python_reader_reads_what_shmflow_pub_published(name, dtype, shmflow_bin):
    data = frames_of(dtype, FRAMES, 1)
    pub = subprocess.Popen(
        [shmflow_bin, "pub", name, "--shape", ",".join(map(str, SHAPE)),
         "--dtype", RUST_NAMES[dtype], "--slots", "4", "--wait-readers", "1"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ring = shmflow.open(name, timeout=20)
        assert ring.dtype == np.dtype(dtype) and ring.shape == SHAPE
        r = ring.reader()

        def feed():  # from a thread: the pipe fills before the ring's 4 slots are read
            pub.stdin.write(b"".join(data))
            pub.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        got = []
        for f in r:  # ends when pub's writer detaches at the end of its input
            assert f.array.dtype == np.dtype(dtype) and f.array.shape == SHAPE
            got.append(f.array.tobytes())
        assert pub.wait(timeout=20) == 0, pub.stderr.read()
        feeder.join(timeout=20)
        assert got == data
    finally:
        pub.kill()
        pub.wait()


@pytest.mark.parametrize("dtype", shmflow.DTYPES)
def test_shmflow_sub_md5_matches_a_ring_written_from_python(name, dtype, shmflow_bin):
    data = frames_of(dtype, FRAMES, 2)
    ring = shmflow.create(name, shape=SHAPE, dtype=dtype, slots=4)
    sub = subprocess.Popen([shmflow_bin, "sub", name, "--md5", "--timeout", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        w = ring.writer()
        w.wait_for_readers(1, timeout=20)
        for i, b in enumerate(data):
            if i % 2:
                w.send(np.frombuffer(b, dtype).reshape(SHAPE), timeout=20)
            else:
                with w.reserve(timeout=20) as a:
                    a[...] = np.frombuffer(b, dtype).reshape(SHAPE)
        del w  # the stream ends: sub exits 0
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        want = [f"{i} {hashlib.md5(b).hexdigest()}" for i, b in enumerate(data)]
        assert out.split("\n")[:FRAMES] == want
    finally:
        sub.kill()
        sub.wait()


def test_shmflow_ls_and_inspect_see_a_python_ring(name, shmflow_bin):
    ring = shmflow.create(name, shape=(2, 3), dtype=np.float32, slots=4, mode="drop-oldest")
    r = ring.reader()
    out = subprocess.run([shmflow_bin, "inspect", name], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    assert "f32" in out.stdout and "drop-oldest" in out.stdout
    assert str(os.getpid()) in out.stdout
    del r
