"""An mpire WorkerPool whose workers take frames from a queue ring.

    python examples/mpire_pool.py [--frames N] [--workers W]

The main process publishes N frames of 480x640x3 uint8 into a queue ring (each frame goes to
exactly one reader); each pool task takes the next frame from the ring in place (no pickling
of the array) and returns its tag and checksum. The rule this shows: the workers open the
ring themselves, in `worker_init`, after the fork. A Ring, Reader or Writer inherited
through the fork raises shmflow.WrongProcess; here the workers get the ring's *name*.
"""

import argparse
import time

import numpy as np
from mpire import WorkerPool

import shmflow

SHAPE = (480, 640, 3)


def worker_init(name, worker_state):
    # After the fork, in the worker: open the ring and attach a reader of our own.
    worker_state["reader"] = shmflow.open(name, timeout=10).reader()


def task(name, worker_state, _i):
    with worker_state["reader"].recv(timeout=30) as f:
        return f.tag, int(f.array.sum(dtype=np.uint64))


def frame(i):
    return np.full(SHAPE, i % 251, np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    name = f"mpire-example-{np.random.randint(1 << 30)}"
    with shmflow.create(name, shape=SHAPE, dtype=np.uint8, slots=8, mode="queue") as ring:
        writer = ring.writer()
        start = time.perf_counter()
        with WorkerPool(n_jobs=args.workers, shared_objects=name, use_worker_state=True,
                        start_method="fork") as pool:
            pending = [pool.apply_async(task, (i,), worker_init=worker_init)
                       for i in range(args.frames)]
            for i in range(args.frames):
                with writer.reserve(timeout=30, tag=i) as a:
                    a[...] = i % 251          # fill the slot in place
            results = [p.get(timeout=60) for p in pending]
        took = time.perf_counter() - start

    want = {i: int(frame(i).sum(dtype=np.uint64)) for i in range(args.frames)}
    got = dict(results)
    bad = [t for t, s in got.items() if want.get(t) != s]
    if sorted(got) != list(range(args.frames)) or bad:
        print(f"mismatch: {len(got)} distinct frames, {len(bad)} wrong checksums")
        raise SystemExit(1)
    print(f"{args.frames} frames through {args.workers} mpire workers in {took:.2f} s "
          f"({args.frames / took:.0f} frames/s), each exactly once, checksums equal")


if __name__ == "__main__":
    main()
