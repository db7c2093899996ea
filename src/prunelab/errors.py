"""User-facing errors.

Every mistake a user can make (a bad name, a value out of range, a missing file or data set, a corrupt
checkpoint) raises a subclass of :class:`PrunelabError` carrying one clear sentence. The CLI prints that
sentence and exits with status 2; library users catch it like any exception.
"""
from __future__ import annotations


class PrunelabError(Exception):
    """A problem with the user's input, stated in one sentence."""

    exit_code = 2


class ConfigError(PrunelabError, ValueError):
    """An unknown name, an unknown parameter or a value out of range."""


class DataMissingError(PrunelabError, FileNotFoundError):
    """A data set is not where prunelab was told to look."""


class CheckpointError(PrunelabError):
    """A checkpoint or mask file is missing, truncated, tampered with or from another model."""


class TrainingDiverged(PrunelabError):
    """The loss became NaN or infinite; nothing of the diverged stage is saved."""


class ShrinkError(PrunelabError):
    """The shrunk model does not compute what the masked model computes."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters, for a one-sentence error naming a
    library's failure; its type's name when the message is empty (indexing the lines of an empty message was an
    IndexError inside the error path)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
