"""The JSON records of a run, as pydantic models: what every reader may rely on, checked when written and when read.

``summary.json`` (:class:`SummaryRecord`) and each checkpoint's ``state.json`` (:class:`StateRecord`) are
validated on the way out (a bug that writes a malformed record fails the run, not a later reader) and on the
way in (a file edited, truncated or written by something else is one sentence naming the file and the key, not
a KeyError). The models name the fields readers use; the records carry more (per-layer tables, controls,
accounting), which are kept as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from ..errors import CheckpointError
from ..io import read_json


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class FileDigest(_Record):
    sha256: str
    bytes: int


class StateRecord(_Record):
    """A checkpoint's state.json (its completion marker, written last)."""

    optimizer: dict | None = None
    rng: dict | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    seconds: float | None = None
    files: dict[str, FileDigest] | None = None  # what the checkpoint wrote: SHA-256 and size per file


class StageRow(_Record):
    stage: str
    test_acc: float
    sparsity: float = 0.0
    acc_before_retrain: float | None = None
    seconds: float


class SummaryRecord(_Record):
    """summary.json of a finished run."""

    recipe: str
    run_dir: str
    seed: int
    method: Any = None
    dense_acc: float | None
    pruned_acc: float | None
    task: str = "classification"
    params_total: int
    params_nonzero: int
    compression_model: float
    flops_dense: int
    flops_nonzero: int
    wall_seconds: float
    stages: list[StageRow]
    bytes_dense_file: int


def validated(model: type[BaseModel], data: Any, path: str | Path) -> dict:
    """``data`` checked against ``model``; CheckpointError naming the file and the first bad key."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(the whole record)"
        raise CheckpointError(f"{path} is malformed at {key}: {err['msg']}; rerun the run to rewrite it") from None
    return data


def read_record(model: type[BaseModel], path: str | Path) -> dict:
    """Read a JSON record and check it against ``model`` (see :func:`validated`)."""
    return validated(model, read_json(path), path)


def _sealed(paths) -> list:
    return [paths.summary, paths.metrics]


def seal(paths) -> None:
    """Write the run's seal (``seal.json``, last): SHA-256 and size of its summary and concatenated metrics, so
    that an edited result is refused rather than shown (see :func:`load_summary`)."""
    from ..io import atomic_write_json, file_sha256

    atomic_write_json(paths.seal, {f.name: {"sha256": file_sha256(f), "bytes": f.stat().st_size}
                                   for f in _sealed(paths) if f.is_file()})


def seal_problems(paths) -> list[str]:
    """What differs between a finished run's summary and metrics and its seal ([] when they match)."""
    from ..io import file_sha256

    if not paths.seal.is_file():
        return [f"{paths.seal.name} is missing (the run did not finish, or was written before runs were sealed)"]
    try:
        record = read_record(SealRecord, paths.seal)
    except CheckpointError as exc:
        return [str(exc)]
    out = []
    for f in _sealed(paths):
        d = record.get(f.name)
        if d is None and not f.is_file():
            continue
        if d is None or not f.is_file():
            out.append(f"{f.name} is {'missing' if d is not None else 'not covered by the seal'}")
        elif f.stat().st_size != d["bytes"] or file_sha256(f) != d["sha256"]:
            out.append(f"{f.name} was changed after the run wrote it (its SHA-256 differs from {paths.seal.name})")
    return out


class SealRecord(RootModel[dict[str, FileDigest]]):
    """seal.json: {file name: digest} of the run's summary and metrics."""


def load_summary(run_dir: str | Path) -> dict:
    """summary.json of a finished run: CheckpointError when missing, corrupt, malformed or not the one the run
    wrote (its seal differs), saying to rerun, which rewrites it from the checkpoints."""
    from .paths import RunPaths

    paths = RunPaths(Path(run_dir))
    paths.require_finished()
    problems = seal_problems(paths)
    if problems:
        raise CheckpointError(f"{paths.root}: {problems[0]}; rerun the run to rewrite its summary from its "
                              "checkpoints")
    return read_record(SummaryRecord, paths.summary)
