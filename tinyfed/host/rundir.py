"""A run directory's integrity: one run at a time, private files, writes that fail with the file's name.

Two hosts on one run directory overwrite each other's plan and records and then both die, so every
command that writes a run (``run``, ``demo``, ``run --resume``) takes :class:`RunLock` on
``RUN_DIR/.lock`` before it writes anything there and holds it to its end; a second one is refused
at once. Checkpoints hold per-board updates, so a run directory is made 0700 and its files 0600
(:func:`private_files`). A write that fails (a full disk) is a :class:`~tinyfed.errors.WriteError`
naming the file, not a bare ``No space left on device``.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from tinyfed.errors import TinyfedError, WriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "RunDirBusy", "RunLock", "holds_run", "lock_holder", "make_run_dir", "private_files",
           "write_error"]

LOCK_FILE = ".lock"
#: How long taking the lock retries: a probe (:func:`lock_holder`) holds it for microseconds, a run for its life.
_LOCK_PATIENCE_S = 1.0


class RunDirBusy(TinyfedError):
    """Another tinyfed process holds the run directory's lock."""


def make_run_dir(path: Path) -> Path:
    """Make ``path`` (and its parents) with the run directory itself 0700: its checkpoints hold per-board updates."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise TinyfedError("not a directory", fix="give a directory as --out", source=str(path)) from None
    except OSError as exc:
        raise write_error(path, exc) from None
    except ValueError as exc:  # e.g. a NUL byte in the name
        raise TinyfedError(f"not a usable directory name ({exc})", fix="give another --out",
                           source=repr(str(path))) from None
    return path


@contextmanager
def private_files() -> Iterator[None]:
    """Files and directories made inside are for their owner alone (umask 077), whoever writes them."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def holds_run(path: Path) -> bool:
    """Whether ``path`` already holds a run that got as far as training (events or a checkpoint)."""
    if not path.is_dir():
        return False
    events = path / "events.jsonl"
    return (events.is_file() and events.stat().st_size > 0) or any(path.glob("checkpoint-*.json"))


def _busy(run_dir: Path, pid: str | None) -> RunDirBusy:
    who = f" (pid {pid})" if pid else ""
    return RunDirBusy(f"{run_dir} is in use by another tinyfed run{who}",
                      fix="wait for that run to end (or stop it), or give another --out")


def _read_pid(fd: int) -> str | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def lock_holder(run_dir: Path) -> str | None:
    """The pid (as written) of the process holding ``run_dir``'s lock, ``""`` when it wrote none, None when free.

    Probed with a shared lock dropped at once; :class:`RunLock` retries briefly, so a probe never
    makes a real run fail."""
    if fcntl is None:  # pragma: no cover - no advisory locks on this platform
        return None
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except (OSError, ValueError):  # no lock file (or a path no file can have): no holder
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or ""
    finally:
        os.close(fd)
    return None


def refuse_if_busy(run_dir: Path) -> None:
    """Refuse at once a run directory another tinyfed run holds (before anything is loaded or written)."""
    pid = lock_holder(run_dir)
    if pid is not None:
        raise _busy(run_dir, pid)


class RunLock:
    """``RUN_DIR/.lock``, held with ``flock`` by the one process writing the run; it holds that process's pid.

    The file stays behind when the run ends (removing it would let a third process lock a file
    no one else sees); a lock is released by the kernel when its holder dies, so a killed run's
    directory can be resumed at once."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            self._take()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def _take(self) -> None:
        assert self._fd is not None
        if fcntl is None:  # pragma: no cover - no advisory locks on this platform
            return
        deadline = time.monotonic() + _LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:  # held longer than a probe holds it: a run
                    raise _busy(self.run_dir, _read_pid(self._fd)) from None
                time.sleep(0.05)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def close(self) -> None:
        """Release the lock (idempotent); the pid is cleared so a stale file names no one."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_RIGHT = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error(path: Path, exc: OSError) -> WriteError:
    """A failed write of ``path`` as one line naming the file, the system's reason and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = path.parent
    if exc.errno in _NO_SPACE:
        fix = f"free space on the disk holding {where}"
    elif exc.errno in _NO_RIGHT:
        fix = f"make {where} writable by this user"
    else:
        fix = f"check the disk holding {where}"
    return WriteError(f"cannot write {path.name} ({reason})", fix=fix, source=str(path))
