"""Python -> Python frame streaming: shmflow against what Python users use today.

    python -m shmflow.bench [--frames N] [--runs R] [--shape H,W,C] [--only NAME,...] [--json]

Each transport streams N frames (1080p rgb24 by default) from a writer process to a reader
process; the writer fills every byte of each frame through a numpy view, the reader reads
every byte (``arr.max()``). Both are fresh ``spawn`` processes; the reader times from its
first frame to its last. Each figure is the median of R runs (min-max beside it).

Transports:
  shmflow      a lossless ("block") shmflow ring of 4 slots, filled in place (reserve);
               both ends wait by spinning 50 us, then sleeping (the default)
  shmflow-busy the same with spin="busy" at both ends: they never sleep (as iceoryx2's
               polling subscriber and retrying publisher do)
  mp.Queue     multiprocessing.Queue(maxsize=4) of numpy arrays (pickled through a pipe)
  shm+sem      a multiprocessing.shared_memory ring of 4 slots with a semaphore pair
  iceoryx2     iceoryx2's Python package, publish-subscribe, loaned slices viewed through
               numpy, RetryUntilDelivered (lossless); skipped if iceoryx2 is not installed

The pipeline limit is what one core does alone: the fill and the read of a frame, timed in
this process over 4 private frames in turn (as a ring's slots are); with writer and reader
on two cores a stream cannot beat the slower of the two. Because the two stages share the
memory system, the bench also runs both at once, each on its own private frames, in two
processes: the slower of those rates is what a transport could reach if it cost nothing. Figures of one run only compare with each other: run it on a
quiet machine, and compare ratios, not absolute numbers, across machines.
"""

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid

import numpy as np

SLOTS = int(os.environ.get("SHMFLOW_BENCH_SLOTS", "4"))  # slots of every ring (and queue size)


def _fill(a, i):
    a[...] = i & 0xFF


def _read(a):
    return int(a.max())


# ---------------------------------------------------------------- shmflow


def _shmflow_writer(name, shape, n, go, spin=None):
    import shmflow

    w = shmflow.open(name, timeout=30).writer(spin=spin)
    w.wait_for_readers(1, timeout=30)
    go.wait(30)
    for i in range(n):
        with w.reserve(timeout=30) as a:
            _fill(a, i)


def _shmflow_reader(name, shape, n, ready, result, spin=None):
    import shmflow

    r = shmflow.open(name, timeout=30).reader(spin=spin)
    ready.set()
    t0 = None
    for i in range(n):
        with r.recv(timeout=30) as f:
            _read(f.array)
        if t0 is None:
            t0 = time.perf_counter()
    result.put((n - 1) / (time.perf_counter() - t0))


def _shmflow_setup(shape):
    import shmflow

    name = f"bench-py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ring = shmflow.create(name, shape=shape, dtype=np.uint8, slots=SLOTS, mode="block")
    return ring, name


def _shmflow_busy_writer(name, shape, n, go):
    _shmflow_writer(name, shape, n, go, spin="busy")


def _shmflow_busy_reader(name, shape, n, ready, result):
    _shmflow_reader(name, shape, n, ready, result, spin="busy")


# ---------------------------------------------------------------- multiprocessing.Queue


def _queue_writer(q, shape, n, go):
    go.wait(30)
    frame = np.empty(shape, np.uint8)
    for i in range(n):
        _fill(frame, i)
        q.put(frame)


def _queue_reader(q, shape, n, ready, result):
    ready.set()
    t0 = None
    for i in range(n):
        _read(q.get(timeout=60))
        if t0 is None:
            t0 = time.perf_counter()
    result.put((n - 1) / (time.perf_counter() - t0))


# ---------------------------------------------------------------- shared_memory + semaphores


def _attach_shm(name):
    from multiprocessing import shared_memory

    # Spawned children share the parent's resource tracker, which unlinks the segment once
    # (the parent does, at the end of the run).
    return shared_memory.SharedMemory(name=name)


def _sem_writer(args, shape, n, go):
    name, empty, full = args
    shm = _attach_shm(name)
    size = int(np.prod(shape))
    views = [np.ndarray(shape, np.uint8, buffer=shm.buf, offset=k * size) for k in range(SLOTS)]
    go.wait(30)
    for i in range(n):
        empty.acquire()
        _fill(views[i % SLOTS], i)
        full.release()
    del views
    shm.close()


def _sem_reader(args, shape, n, ready, result):
    name, empty, full = args
    shm = _attach_shm(name)
    size = int(np.prod(shape))
    views = [np.ndarray(shape, np.uint8, buffer=shm.buf, offset=k * size) for k in range(SLOTS)]
    ready.set()
    t0 = None
    for i in range(n):
        full.acquire()
        _read(views[i % SLOTS])
        empty.release()
        if t0 is None:
            t0 = time.perf_counter()
    result.put((n - 1) / (time.perf_counter() - t0))
    del views
    shm.close()


# ---------------------------------------------------------------- iceoryx2


def _iox_service(name, size):
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(SLOTS)
        .history_size(0)
        .open_or_create()
    )
    return iox2, node, service


def _iox_writer(name, shape, n, go):
    size = int(np.prod(shape))
    iox2, node, service = _iox_service(name, size)
    pub = (
        service.publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    go.wait(30)
    for i in range(n):
        sample = pub.loan_slice_uninit(size)
        a = np.frombuffer(sample.payload().as_memory_view(), np.uint8).reshape(shape)
        _fill(a, i)
        del a
        sample.assume_init().send()
    time.sleep(0.5)  # let the reader take the last samples before the publisher goes


def _iox_reader(name, shape, n, ready, result):
    iox2, node, service = _iox_service(name, int(np.prod(shape)))
    sub = service.subscriber_builder().create()
    ready.set()
    t0 = None
    got = 0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        sample = sub.receive()  # iceoryx2's publish-subscribe has no blocking receive: poll
        if sample is None:
            continue
        _read(np.frombuffer(sample.payload().as_memory_view(), np.uint8).reshape(shape))
        del sample
        got += 1
        if t0 is None:
            t0 = time.perf_counter()
    result.put((got - 1) / (time.perf_counter() - t0) if got == n else float("nan"))


# ---------------------------------------------------------------- the runner


def _run_pair(ctx, writer, reader, arg, shape, n):
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    r = ctx.Process(target=reader, args=(arg, shape, n, ready, result))
    r.start()
    if not ready.wait(60):
        r.kill()
        raise RuntimeError(f"{reader.__name__} did not start")
    w = ctx.Process(target=writer, args=(arg, shape, n, go))
    w.start()
    go.set()
    try:
        end = time.monotonic() + 300
        while True:
            try:
                fps = result.get(timeout=0.2)
                break
            except Exception:
                for p in (w, r):
                    if p.exitcode not in (None, 0):
                        raise RuntimeError(f"{p.name} ({p._target.__name__}) failed with "
                                           f"exit code {p.exitcode}") from None
                if time.monotonic() > end:
                    raise RuntimeError("no result within 300 s") from None
    finally:
        w.join(60)
        r.join(60)
        for p in (w, r):
            if p.is_alive():
                p.kill()
    return fps


def _pipeline_limit(shape, n):
    # Frames as a ring holds them: SLOTS buffers in turn, so they are not all in the cache.
    bufs = [np.empty(shape, np.uint8) for _ in range(SLOTS)]
    for k, a in enumerate(bufs):
        _fill(a, k)
    t = time.perf_counter()
    for i in range(n):
        _fill(bufs[i % SLOTS], i)
    fill = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        _read(bufs[i % SLOTS])
    read = (time.perf_counter() - t) / n
    return 1.0 / max(fill, read), 1.0 / fill, 1.0 / read


def _stage_alone(kind, shape, n, go, result):
    """One stage on private frames, in its own process (for the concurrent limit)."""
    bufs = [np.empty(shape, np.uint8) for _ in range(SLOTS)]
    for k, a in enumerate(bufs):
        _fill(a, k)
    go.wait(30)
    t = time.perf_counter()
    for i in range(n):
        if kind == "fill":
            _fill(bufs[i % SLOTS], i)
        else:
            _read(bufs[i % SLOTS])
    result.put((kind, n / (time.perf_counter() - t)))


def _concurrent_limit(ctx, shape, n):
    """The fill and the read each alone on private frames, but at the same time on the two
    cores: what the memory system leaves each stage when both run (no data crosses)."""
    go, result = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_stage_alone, args=(k, shape, n, go, result))
          for k in ("fill", "read")]
    for p in ps:
        p.start()
    time.sleep(0.3)
    go.set()
    rates = dict(result.get(timeout=120) for _ in ps)
    for p in ps:
        p.join(30)
    return min(rates.values())


def _median(xs):
    xs = [x for x in xs if x == x]
    return (statistics.median(xs), min(xs), max(xs)) if xs else (float("nan"),) * 3


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m shmflow.bench", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--frames", type=int, default=300, help="frames per run (default 300; "
                    "mp.Queue streams a sixth of them, it is that much slower)")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    ap.add_argument("--shape", default="1080,1920,3", help="frame shape (default 1080,1920,3)")
    ap.add_argument("--only", default="", help="comma-separated transports to run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.frames < 2 or args.runs < 1:
        ap.error("--frames must be >= 2 and --runs >= 1")
    ctx = mp.get_context("spawn")
    only = {s for s in args.only.split(",") if s}

    try:
        import iceoryx2  # noqa: F401
        have_iox = True
    except ImportError:
        have_iox = False

    figures = {}

    def measure(label, writer, reader, setup, n):
        """`setup()` makes a fresh transport for each run: (argument, cleanup function)."""
        if only and label not in only:
            return
        runs = []
        for _ in range(args.runs):
            arg, cleanup = setup()
            try:
                runs.append(_run_pair(ctx, writer, reader, arg, shape, n))
            finally:
                cleanup()
        figures[label] = _median(runs)
        if not args.json:
            m, lo, hi = figures[label]
            print(f"  {label:<10} {m:9.0f} frames/s  ({lo:.0f}-{hi:.0f})", file=sys.stderr)

    limits = [_pipeline_limit(shape, max(20, args.frames // 3)) for _ in range(args.runs)]
    limit = statistics.median(x[0] for x in limits)
    fill = statistics.median(x[1] for x in limits)
    read = statistics.median(x[2] for x in limits)
    together = statistics.median(
        _concurrent_limit(ctx, shape, args.frames) for _ in range(args.runs))
    if not args.json:
        print(f"shape {shape} uint8, {args.frames} frames per run, {args.runs} runs, "
              f"{os.cpu_count()} CPUs; limit {limit:.0f} frames/s (fill alone {fill:.0f}, "
              f"read alone {read:.0f}); both stages at once on private frames: "
              f"{together:.0f}", file=sys.stderr)

    def shmflow_ring():
        ring, name = _shmflow_setup(shape)
        return name, lambda: ring.remove()

    measure("shmflow", _shmflow_writer, _shmflow_reader, shmflow_ring, args.frames)
    measure("shmflow-busy", _shmflow_busy_writer, _shmflow_busy_reader, shmflow_ring,
            args.frames)

    def mp_queue():
        return ctx.Queue(maxsize=SLOTS), lambda: None

    measure("mp.Queue", _queue_writer, _queue_reader, mp_queue, max(20, args.frames // 6))

    from multiprocessing import shared_memory

    def shm_ring():
        shm = shared_memory.SharedMemory(create=True, size=SLOTS * int(np.prod(shape)))

        def cleanup():
            shm.close()
            shm.unlink()

        return (shm.name, ctx.Semaphore(SLOTS), ctx.Semaphore(0)), cleanup

    measure("shm+sem", _sem_writer, _sem_reader, shm_ring, args.frames)

    if have_iox:
        def iox_service():
            return f"shmflow-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}", lambda: None

        measure("iceoryx2", _iox_writer, _iox_reader, iox_service, args.frames)

    ours = figures.get("shmflow", (float("nan"),))[0]
    out = {
        "shape": list(shape), "frames": args.frames, "runs": args.runs,
        "cpus": os.cpu_count(), "pipeline_limit": limit, "fill_alone": fill,
        "read_alone": read, "concurrent_limit": together,
        "transports": {k: {"median": v[0], "min": v[1], "max": v[2],
                           "shmflow_over_this": ours / v[0] if v[0] else None}
                       for k, v in figures.items()},
        "shmflow_over_limit": ours / limit,
        "shmflow_over_concurrent_limit": ours / together,
        "iceoryx2": "measured" if have_iox else "not installed (pip install iceoryx2)",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print()
    shape_s = "x".join(map(str, shape))
    print(f"| transport (Python -> Python, {shape_s} uint8) | frames/s (min-max) "
          f"| shmflow is |")
    print("|---|---:|---:|")
    for k, (m, lo, hi) in figures.items():
        ratio = "" if k == "shmflow" else f"{ours / m:.2f}x"
        print(f"| {k} | {m:,.0f} ({lo:,.0f}-{hi:,.0f}) | {ratio} |")
    print(f"| pipeline limit (fill {fill:,.0f}, read {read:,.0f} alone) | {limit:,.0f} | "
          f"{ours / limit:.2f} of it |")
    print(f"| both stages at once, private frames (no data crosses) | {together:,.0f} | "
          f"{ours / together:.2f} of it |")
    if not have_iox:
        print("\n(iceoryx2 not installed: pip install iceoryx2 to compare with it)")


if __name__ == "__main__":
    main()
