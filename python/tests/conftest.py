"""Shared helpers: unique ring names (removed at the end of each test), child Python
processes, and the path of the `shmflow` command."""

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import shmflow


@pytest.fixture
def name(request):
    """A ring name no other test (or run) uses; the ring is removed at the end if left."""
    n = f"pytest-{request.node.name[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    n = "".join(c if c.isalnum() or c in "._-" else "-" for c in n)
    yield n
    try:
        shmflow.remove(n)
    except shmflow.NotFound:
        pass


@pytest.fixture
def shmflow_bin():
    """The `shmflow` command (python/test.sh builds it and sets SHMFLOW_BIN)."""
    path = os.environ.get("SHMFLOW_BIN")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "target", "release", "shmflow")
    if not os.access(path, os.X_OK):
        pytest.fail(f"the shmflow command is not built at {path}: run python/test.sh")
    return path


def python_child(code, *args, **kw):
    """Starts `python -c code args...` (stdout and stderr piped, text). It runs in /, so that
    `import shmflow` finds the installed package, not the source folder python/shmflow."""
    kw.setdefault("cwd", "/")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def read_line(proc, want, timeout=20.0):
    """Reads lines of proc's stdout until one equals `want`; fails after `timeout` s."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.strip() == want:
            return
    proc.kill()
    out, err = proc.communicate(timeout=10)
    pytest.fail(f"child never printed {want!r}; stdout {seen!r} {out!r}, stderr {err!r}")


def wait_until(what, cond, within=20.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.002)
    pytest.fail(f"timed out after {within} s waiting for {what}")
