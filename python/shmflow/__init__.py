"""shmflow: numpy frames in POSIX shared memory.

A *ring* is a named shared-memory segment holding a few slots of one shape and dtype. A
writer fills a slot in place through a numpy view and commits it; readers get a read-only
numpy view of the same memory. No copies, no pickling, and the same rings that Rust
processes and the ``shmflow`` command use::

    import numpy as np, shmflow

    ring = shmflow.create("cam", shape=(1080, 1920, 3), dtype=np.uint8, slots=4)
    w = ring.writer()
    with w.reserve() as a:        # a writable view of the slot
        a[...] = 0                # committed when the block ends
    w.send(image)                 # or: one copy in, then commit

    r = shmflow.open("cam", timeout=5.0).reader()
    with r.recv(timeout=1.0) as f:
        f.array.mean()            # a read-only view, valid while f or the array lives
    for f in r:                   # until the writer leaves; WriterDied if it died
        ...

Delivery modes: ``"block"`` (lossless broadcast: the writer waits for the slowest reader),
``"drop-oldest"`` (live broadcast: slow readers skip frames and see ``missed``), ``"queue"``
(each frame to exactly one reader, several writers).

Safety: a frame's slot stays held while its ``Frame`` (until the end of its ``with`` block or
``release()``) or any numpy array of it is alive, so no array ever sees its memory reused.
A reader may hold ``max_held`` frames at once; one more ``recv`` raises ``TooManyHeld`` at
once. A writer's array is writable only inside its reservation. Readers, writers and rings
belong to the process that made them: after ``fork`` the child must open the ring itself
(``WrongProcess`` otherwise); a ``Ring`` pickles as its name for ``spawn`` children and
``worker_init`` functions.

Blocking calls release the GIL and wake for Ctrl-C. Timeouts are in seconds: ``None`` waits
for ever, ``0`` does not wait.
"""

from typing import Any, Iterable, List, Optional, Union

from . import _shmflow
from ._errors import (
    AlreadyExists,
    AlreadyReserved,
    Corrupted,
    Disconnected,
    Error,
    InvalidName,
    LayoutMismatch,
    NoSpace,
    NotFound,
    NotReady,
    PermissionDenied,
    SlotInUse,
    Timeout,
    TooManyHeld,
    TooManyPeers,
    VersionMismatch,
    WriterDied,
    WrongProcess,
)
from ._shmflow import Frame, Reader, Reservation, Ring, Writer

#: The numpy dtypes a ring can hold.
DTYPES = tuple(_shmflow.DTYPES)
#: The largest number of dimensions of a ring's frames.
MAX_DIMS = _shmflow.MAX_DIMS
#: The delivery modes.
MODES = ("block", "drop-oldest", "queue")

__version__ = "0.1.0"


def create(
    name: str,
    shape: Union[int, Iterable[int]],
    dtype: Any,
    *,
    slots: int = 8,
    mode: str = "block",
    max_readers: int = 4,
    max_writers: Optional[int] = None,
    permissions: int = 0o600,
    group: Union[str, int, None] = None,
    keep: bool = False,
) -> Ring:
    """Creates the ring ``name`` and returns its handle.

    ``shape`` is the largest frame shape (every slot holds one frame of it; a frame may be
    smaller, same rank), ``dtype`` anything ``numpy.dtype`` takes whose type is one of
    ``shmflow.DTYPES``. ``mode`` is ``"block"``, ``"drop-oldest"`` or ``"queue"``.
    ``max_writers`` applies to queue rings (a broadcast ring has one writer).
    ``permissions`` and ``group`` (a name or gid) decide who else may open it.

    The ring's name is removed when this handle and every reader and writer made from it
    are gone (or when its ``with`` block ends), unless ``keep=True``; processes that have it
    open go on using it.

    Raises ``AlreadyExists``, ``InvalidName``, ``PermissionDenied``, ``NoSpace``, and
    ``ValueError``/``TypeError`` for a bad shape, dtype or mode.
    """
    if isinstance(shape, int):
        shape = (shape,)
    return _shmflow.create(
        name,
        [int(d) for d in shape],
        dtype,
        slots=slots,
        mode=mode,
        max_readers=max_readers,
        max_writers=max_writers,
        permissions=permissions,
        group=group,
        keep=keep,
    )


def open(name: str, timeout: Optional[float] = 0.0) -> Ring:  # noqa: A001 (the documented name)
    """Opens the existing ring ``name``, waiting up to ``timeout`` seconds for it to appear
    (``None``: for ever; ``0``: not at all). Its dtype and shape come from the ring.

    Raises ``NotFound`` (timeout 0), ``Timeout``, ``PermissionDenied``, ``Corrupted``,
    ``VersionMismatch``, ``InvalidName``.
    """
    return _shmflow.open(name, timeout)


def list() -> List[str]:  # noqa: A001 (the documented name)
    """The names of the rings on this machine, sorted."""
    return _shmflow.list()


def remove(name: str) -> None:
    """Removes the name of ring ``name``: new opens fail, processes that have it open go on
    using it. Raises ``NotFound``."""
    _shmflow.remove(name)


__all__ = [
    "create",
    "open",
    "list",
    "remove",
    "Ring",
    "Reader",
    "Writer",
    "Frame",
    "Reservation",
    "DTYPES",
    "MAX_DIMS",
    "MODES",
    "Error",
    "InvalidName",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "NoSpace",
    "Corrupted",
    "VersionMismatch",
    "NotReady",
    "LayoutMismatch",
    "Timeout",
    "Disconnected",
    "WriterDied",
    "TooManyHeld",
    "TooManyPeers",
    "WrongProcess",
    "AlreadyReserved",
    "SlotInUse",
]
