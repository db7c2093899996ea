"""Bounds on the numbers a user gives (recipes, command-line flags, API arguments), each with its reason.

Torch-free, so the command-line parser can check its flags without importing torch.
"""
from __future__ import annotations

import os

#: Seeds are 64-bit integers, torch.manual_seed's range.
MAX_SEED = 2 ** 63 - 1
#: Four threads per core: beyond that a thread count is a typo (torch segfaults at 100,000).
MAX_THREADS = 4 * (os.cpu_count() or 1)
#: Rounds of an iterative schedule: each is a stage with its own checkpoint (a billion filled 20 GB of memory).
MAX_ROUNDS = 1000
#: Pruning events one schedule may plan (its events are a list): 100,000 is an event every 10 steps of a
#: million-step training; a billion rounds filled memory before anything ran.
MAX_EVENTS = 100_000
