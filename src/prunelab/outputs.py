"""The output boundary: what prunelab may write, replace or remove, and how a refusal of the system is said.

Every file prunelab writes goes through :func:`prunelab.io.atomic_write_bytes` and its siblings, which call
:func:`check_replaceable` first and write with the user's umask; every folder an output command writes (a
Hugging Face export, ``compare --out``) goes through :func:`prepare_folder` and :func:`install_folder`. The
rules, in one place:

- a path that exists and is not a regular file (a folder, a symbolic link, a device, a pipe) is never
  replaced by a file: prunelab refuses, naming it (writing over ``/dev/full`` as root, or through a link into
  another folder, is never what was meant);
- a folder is replaced only if prunelab wrote it (it holds the :data:`MARKER` file) and the user asked for
  it (``force``); a folder without the marker is a user's folder and is never deleted or emptied;
- an output the user named (``--out``) that already exists is replaced only with ``--force``;
- an ``OSError`` of the file system (full disk, file-size limit, read-only, permissions, a name too long) is
  one sentence naming the path (:func:`describe_os_error`); the temporary file is removed and the old file
  is untouched, so a write that did not land never reports success.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import PrunelabError

#: The file that marks a folder prunelab wrote as an output (and may therefore replace when asked to).
MARKER = ".prunelab-output"


class OutputError(PrunelabError):
    """prunelab refused to write somewhere (a user's folder, a link, a device), or the file system refused."""


def _umask() -> int:
    """The process's umask (read by setting and restoring it: the only way POSIX offers)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path: str | Path, folder: bool = False) -> None:
    """Give a file (or folder) made by ``mkstemp`` (``mkdtemp``), which are private (0600 / 0700), the mode a
    plain ``open`` (``mkdir``) would give under the user's umask, so a shared runs folder stays readable."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    return "a special file (pipe or socket)"


def check_replaceable(path: str | Path) -> None:
    """OutputError unless ``path`` is absent or a regular file (not a link to one): what a file write may replace."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:  # ENOTDIR (a file where a folder is meant), ELOOP, ENAMETOOLONG, EACCES
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} is {_kind(st)}, not a file: prunelab replaces only regular files it could have "
                          "written; choose another path")


def check_output_file(path: str | Path, force: bool) -> Path:
    """The checks of a user-named output file: absent, or a regular file and ``force``."""
    path = Path(path)
    check_replaceable(path)
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; add --force to replace it")
    return path


def is_owned(folder: str | Path) -> bool:
    """A folder prunelab wrote as an output: it holds the :data:`MARKER` file."""
    return (Path(folder) / MARKER).is_file() and not Path(folder).is_symlink()


def prepare_folder(path: str | Path, force: bool, empty_ok: bool = True) -> Path:
    """Check that an output folder may be written at ``path``: absent; an empty folder (``empty_ok``); or a
    folder prunelab wrote and ``force``. Anything else is refused with OutputError; nothing is touched here."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if not stat.S_ISDIR(st.st_mode):
        what = "a file" if stat.S_ISREG(st.st_mode) else _kind(st)
        raise OutputError(f"{path} is {what}, where a folder is written; choose another path")
    if empty_ok and not any(path.iterdir()):
        return path
    if not is_owned(path):
        raise OutputError(f"{path} is a folder with files that prunelab did not write (no {MARKER} in it); "
                          "prunelab never replaces a user's folder: choose a new or empty one")
    if not force:
        raise OutputError(f"{path} holds an earlier prunelab output; add --force to replace it")
    return path


def mark(folder: str | Path, what: str) -> None:
    """Write the :data:`MARKER` into a folder prunelab made (saying what it holds)."""
    atomic_write_text(Path(folder) / MARKER, json.dumps({"written_by": "prunelab", "holds": what}) + "\n")


def temp_folder_beside(path: str | Path) -> Path:
    """A new folder next to ``path`` (same file system, so it can be renamed into place), with the user's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    user_mode(tmp, folder=True)
    return tmp


def install_folder(tmp: Path, path: str | Path, what: str, force: bool) -> Path:
    """Move the finished folder ``tmp`` to ``path`` (marked as prunelab's): a new path is one rename; an earlier
    prunelab output there is replaced only with ``force`` (checked again now), moved aside, then removed.
    On any failure ``tmp`` is removed and what was at ``path`` stays."""
    path = Path(path)
    try:
        mark(tmp, what)
        prepare_folder(path, force)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")  # the old output, checked to be prunelab's, out of the way
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


_HINTS = {
    errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EFBIG: "the file is larger than this system allows (file-size limit); raise the limit or choose another "
                 "file system",
    errno.EROFS: "choose a writable location", errno.EACCES: "choose a location you may write",
    errno.EPERM: "choose a location you may write", errno.ENAMETOOLONG: "choose a shorter path",
    errno.EISDIR: "a folder is in the way; choose another path",
    errno.ENOTDIR: "a file is in the way where a folder is meant; choose another path",
    errno.ELOOP: "a symbolic link loop is in the way", errno.EEXIST: "something is in the way; choose another path",
}


def describe_os_error(exc: OSError) -> str:
    """One sentence for a file-system error: the path, the system's words and what to do; what was written
    before is intact (every write is atomic)."""
    where = exc.filename or "a file"
    hint = _HINTS.get(exc.errno, "")
    verb = "cannot write" if exc.errno in _WRITE_ERRORS else "cannot use"
    return (f"{verb} {where}: {exc.strerror or exc}" + (f"; {hint}" if hint else "") +
            " (what was written before is intact)")


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR}


def error_from_safetensors(exc: Exception, path: str | Path) -> OSError | None:
    """The OSError inside a safetensors write error (it reports I/O failures as text, ``I/O error: File too large
    (os error 27)`` or ``IoError(Os { code: 28 ... })``, not as an OSError), or None when it is not one."""
    import re

    m = re.search(r"(?:os error |code:\s*)(\d+)", str(exc))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    _atomic(path, lambda f, tmp: f.write(data))


def _atomic(path: str | Path, fill) -> None:
    """Run ``fill(file, its_path)`` on a temporary file next to ``path`` (opened "w+b"), fsync it and rename it
    over ``path``; on any failure the temporary file goes and ``path`` is untouched."""
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder is meant, or no permission: say which folder
        raise OSError(exc.errno, exc.strerror, str(exc.filename or path.parent)) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            fill(f, tmp)
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
        user_mode(tmp)  # by name, after the fill: safetensors' writer makes the file anew (0600 from mkstemp)
        check_replaceable(path)  # again: something may have been put there meanwhile
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:  # say which file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
