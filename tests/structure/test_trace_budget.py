"""Tracing within a budget: a trace that would run for minutes, or out of memory, is one sentence naming where."""
import time

import pytest
import torch
from torch import nn

from prunelab import ConfigError
from prunelab.structure.channels import ChannelGraph


def _net():
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def _walking(stall: bool):
    """A stand-in for Torch-Pruning's graph build that visits the modules and stalls (or runs out of memory)
    at the second Linear."""
    def build(self, model, **kw):
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.out_features == 2:
                if not stall:
                    raise MemoryError
                while True:
                    time.sleep(0.01)
        return self
    return build


def test_a_stalled_trace_stops_at_the_budget_and_names_the_module(monkeypatch):
    import torch_pruning as tp

    monkeypatch.setenv("PRUNELAB_TRACE_SECONDS", "0.3")
    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", _walking(stall=True))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"did not finish within 0.3 s \(stopped in 2 \(Linear\)\)"):
        ChannelGraph(_net(), torch.randn(1, 4))
    assert time.perf_counter() - t0 < 5
    import signal
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the timer is disarmed after


def test_a_trace_out_of_memory_is_one_sentence(monkeypatch):
    import torch_pruning as tp

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", _walking(stall=False))
    with pytest.raises(ConfigError, match=r"ran out of memory after \d+ s \(in 2 \(Linear\)\)"):
        ChannelGraph(_net(), torch.randn(1, 4))


def test_a_real_trace_finishes_within_the_budget_and_a_bad_budget_is_refused(monkeypatch):
    monkeypatch.setenv("PRUNELAB_TRACE_SECONDS", "30")
    assert ChannelGraph(_net(), torch.randn(1, 4)).groups
    monkeypatch.setenv("PRUNELAB_TRACE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="PRUNELAB_TRACE_SECONDS must be a number of seconds >= 0, got 'soon'"):
        ChannelGraph(_net(), torch.randn(1, 4))
