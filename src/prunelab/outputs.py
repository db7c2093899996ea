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


def _check_not_inside(path: Path) -> None:
    owner = owner_of(path)
    if owner is not None:
        raise OutputError(f"{path} is inside {owner}, which prunelab wrote (a run or an output folder) and keeps "
                          "its own records in; choose a path outside it")


def check_output_file(path: str | Path, force: bool) -> Path:
    """The checks of a user-named output file: absent, or a regular file and ``force``."""
    path = Path(path)
    check_replaceable(path)
    _check_not_inside(path)
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; add --force to replace it")
    return path


#: The largest manifest prunelab reads (one line per file of an output folder).
_MAX_MANIFEST_BYTES = 4 << 20


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _walk(folder: Path):
    """(relative name, lstat) of everything under ``folder`` but the manifest, links not followed."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            full = Path(root) / name
            rel = full.relative_to(folder).as_posix()
            if rel != MARKER:
                yield rel, full, os.lstat(full)


def _manifest(folder: Path) -> dict | None:
    """The file table of ``folder``'s marker, or None when there is no readable one (absent, a link, not a
    regular file, oversized, not prunelab's JSON)."""
    marker = folder / MARKER
    try:
        st = os.lstat(marker)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MANIFEST_BYTES:
            return None
        record = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    files = record.get("files") if isinstance(record, dict) and record.get("written_by") == "prunelab" else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None
    return files


def not_owned(folder: str | Path, limit: int = 3) -> list[str]:
    """What in ``folder`` prunelab cannot prove it wrote (empty when the whole folder is its output).

    Proof is the manifest in the :data:`MARKER` file: every regular file under the folder must be listed
    there with the same size and SHA-256 (a file the user added or edited is not prunelab's; a listed file
    the user deleted is no obstacle). A folder without a readable manifest, a marker that is a link, and
    anything that is neither a folder nor a regular file (a link, a device) fail the proof. At most
    ``limit`` problems are returned (the refusal names them)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return [f"{folder} is not a folder"]
    files = _manifest(folder)
    if files is None:
        return [f"no readable {MARKER} manifest"]
    problems = []
    for rel, full, st in _walk(folder):
        if stat.S_ISDIR(st.st_mode):
            continue
        entry = files.get(rel)
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel} ({_kind(st)})")
        elif entry is None:
            problems.append(f"{rel} (not written by prunelab)")
        elif entry.get("bytes") != st.st_size or entry.get("sha256") != _digest(full):
            problems.append(f"{rel} (changed since prunelab wrote it)")
        if len(problems) >= limit:
            break
    return problems


def is_owned(folder: str | Path) -> bool:
    """A folder prunelab wrote as an output, unchanged since: see :func:`not_owned`."""
    return not not_owned(folder, limit=1)


def owner_of(path: str | Path) -> Path | None:
    """The run folder or prunelab output folder that holds ``path`` (its nearest such parent), or None.

    A run folder holds its ``recipe.yaml`` and ``stages/``; an output folder holds the :data:`MARKER`. A path
    inside one is prunelab's bookkeeping, which a user-named output never replaces (``--out RUN/summary.json``
    would overwrite the run's own record)."""
    path = Path(os.path.abspath(path))
    for parent in path.parents:
        if (parent / MARKER).exists() or ((parent / "recipe.yaml").is_file() and (parent / "stages").is_dir()):
            return parent
    return None


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
    problems = not_owned(path)
    if problems:
        raise OutputError(f"{path} is a folder prunelab cannot prove it wrote ({'; '.join(problems)}); prunelab "
                          "never replaces a user's folder: choose a new or empty one")
    if not force:
        raise OutputError(f"{path} holds an earlier prunelab output; add --force to replace it")
    return path


def check_output_folder(path: str | Path, force: bool) -> Path:
    """The checks of a user-named output folder: not inside a run or output folder, then :func:`prepare_folder`."""
    _check_not_inside(Path(path))
    return prepare_folder(path, force)


def mark(folder: str | Path, what: str) -> None:
    """Write the :data:`MARKER` manifest into a folder prunelab made: what it holds and, for every file in it,
    its size and SHA-256 (the proof :func:`not_owned` checks before the folder may be replaced)."""
    folder = Path(folder)
    files = {rel: {"bytes": st.st_size, "sha256": _digest(full)}
             for rel, full, st in _walk(folder) if stat.S_ISREG(st.st_mode)}
    record = {"written_by": "prunelab", "holds": what, "files": files}
    atomic_write_text(folder / MARKER, json.dumps(record, indent=1, sort_keys=True) + "\n")


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
