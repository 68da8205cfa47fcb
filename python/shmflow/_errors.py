"""The exceptions shmflow raises. Every one is a ``shmflow.Error``; where Python has a
builtin for the same failure the class derives from it too (``NotFound`` is a
``FileNotFoundError``, ``Timeout`` a ``TimeoutError``, ...), so generic handlers work."""


class Error(Exception):
    """Base class of every shmflow error."""


class InvalidName(Error, ValueError):
    """The ring name is not valid (empty, too long, or has ``/`` or NUL in it)."""


class NotFound(Error, FileNotFoundError):
    """No ring of that name exists."""


class AlreadyExists(Error, FileExistsError):
    """A ring of that name exists already."""


class PermissionDenied(Error, PermissionError):
    """The ring's permissions do not let this user open it (or create it with that group)."""


class NoSpace(Error, OSError):
    """/dev/shm has no room for a ring that large."""


class Corrupted(Error):
    """The segment is not a shmflow ring, is truncated, or its header is inconsistent; or a
    frame had invalid metadata (only a misbehaving writer produces that)."""


class VersionMismatch(Error):
    """The ring was made by a shmflow with another layout version."""


class NotReady(Error):
    """The ring's creator has not finished initialising it."""


class LayoutMismatch(Error):
    """The ring's dtype or shape is not what was asked for."""


class Timeout(Error, TimeoutError):
    """Nothing happened within the timeout (no frame, no free slot, no ring)."""


class Disconnected(Error):
    """The writer left cleanly and every frame has been read: the stream ended."""


class WriterDied(Error):
    """The writer died (it was found dead) and every frame it committed has been read: the
    stream ended abnormally."""


class TooManyHeld(Error):
    """The reader already holds ``max_held`` frames (a frame is held while its Frame or any
    array of it is alive): release one, or copy the data you keep with ``np.array(f.array)``."""


class TooManyPeers(Error):
    """Every reader (or writer) entry of the ring is taken by a live process."""


class WrongProcess(Error):
    """A reader, writer or ring handle made in another process (inherited through ``fork``)
    was used: open the ring in the process that uses it, e.g. in ``worker_init``."""


class AlreadyReserved(Error):
    """The writer's previous reservation is still open: commit or discard it first."""


class SlotInUse(Error):
    """A reservation could not be committed: views of its array (``a[0]``, memoryviews, ...)
    were still alive at the commit and could have written to the published frame. The slot
    is given back unpublished when they are gone."""


__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and issubclass(value, Error)]
