"""Pruning inside the trainers people use: callbacks that drive a :class:`~prunelab.Pruner` from Hugging Face's
``Trainer`` (:mod:`.hf_trainer`) and from Lightning (:mod:`.lightning`), the same two calls a hand-written loop
makes: ``pruner.after_backward()`` before each optimizer step, ``pruner.step(optimizer)`` after it.

Each module imports its trainer library only when used: ``pip install transformers accelerate`` or ``lightning``.
"""
