"""One process per run folder: an exclusive lock held while a run writes there.

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``, which the kernel releases when its process ends in any way
(``kill -9`` included), so a lock left by a dead process is never in the way and never needs cleaning: the
next process simply takes it. The holder writes its PID into the file, so a second process refused the lock
can say who holds it. (flock is local to a machine: on a network file system shared by several machines, run
one recipe per runs folder per machine.)
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import ConfigError

LOCK = ".lock"


class RunLock:
    """Context manager: hold the folder's lock, or ConfigError naming the process that holds it; with ``wait``
    (a shared dense training that another run is computing) wait for it instead, telling ``log`` once."""

    def __init__(self, root: str | Path, wait: bool = False, log=None) -> None:
        self.path = Path(root) / LOCK
        self.wait, self.log = wait, log
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if not self.wait:
                os.close(fd)
                raise ConfigError(f"another prunelab process (PID {holder}) is running in {self.path.parent}; "
                                  "wait for it to finish or stop it, then run again") from None
            if self.log is not None:
                self.log(f"waiting for prunelab process {holder}, which is writing {self.path.parent}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays, harmless and reused
            self._fd = None
