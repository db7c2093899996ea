"""A time and memory budget for tracing a model's channel graph: past it, one sentence naming where the trace
was, never a hang of minutes or a MemoryError.

Torch-Pruning's dependency graph is generic: on some models (recent transformers blocks with their cache and
attention dispatch, MaxViT, Swin) it runs for minutes or exhausts memory in its index mapping. The budget is
``PRUNELAB_TRACE_SECONDS`` (default 120 s; 0 turns it off). It is enforced by an interval timer, so only in the
main thread of a process on a system that has one (elsewhere the trace runs unbounded, as it did before). The
module named is the innermost ``nn.Module`` found among the local variables of the frames the trace was in
when it stopped (Torch-Pruning walks modules and their graph nodes, which hold them).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType, TracebackType

from torch import nn

from ..errors import ConfigError

DEFAULT_SECONDS = 120.0


class TraceStalled(BaseException):
    """Raised inside the trace by the timer (caught by :func:`trace_budget`); a BaseException, so the traced
    code's own ``except Exception`` does not swallow it."""

    def __init__(self, frame: FrameType | None) -> None:
        super().__init__("tracing stalled")
        self.frame = frame


def budget_seconds() -> float:
    """The budget from ``PRUNELAB_TRACE_SECONDS`` (ConfigError for a value that is not a number >= 0)."""
    raw = os.environ.get("PRUNELAB_TRACE_SECONDS", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_SECONDS
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"PRUNELAB_TRACE_SECONDS must be a number of seconds >= 0, got {raw!r}")
    return value


def _module_in(frames: list[FrameType], names: dict[nn.Module, str]) -> str | None:
    """The innermost traced module among the frames' locals (a module, or a graph node holding one)."""
    for f in reversed(frames):
        for v in f.f_locals.values():
            m = v if isinstance(v, nn.Module) else getattr(v, "module", None)
            if isinstance(m, nn.Module) and names.get(m):
                return f"{names[m]} ({type(m).__name__})"
    return None


def _frames_of(frame: FrameType | None) -> list[FrameType]:
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return list(reversed(out))


def _frames_from(tb: TracebackType | None) -> list[FrameType]:
    out = []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


@contextmanager
def trace_budget(model: nn.Module, what: str = "tracing the model's channel dependencies"):
    """Run the block within the budget; ConfigError naming the module it stalled in, or ran out of memory in."""
    seconds = budget_seconds()
    names = {m: n for n, m in model.named_modules()}
    timed = seconds > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    t0 = time.perf_counter()
    if timed:
        def stop(signum, frame):
            raise TraceStalled(frame)
        previous = signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TraceStalled as exc:
        where = _module_in(_frames_of(exc.frame), names) or "a module it could not name"
        raise ConfigError(f"{what} did not finish within {seconds:g} s (stopped in {where}); prune this model "
                          "element-wise (magnitude, wanda, sparsegpt), or raise PRUNELAB_TRACE_SECONDS") from None
    except MemoryError as exc:
        where = _module_in(_frames_from(exc.__traceback__), names) or "a module it could not name"
        raise ConfigError(f"{what} ran out of memory after {time.perf_counter() - t0:.0f} s (in {where}); prune "
                          "this model element-wise (magnitude, wanda, sparsegpt)") from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
