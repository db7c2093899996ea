"""Data sets: digits (ships with scikit-learn), MNIST, Fashion-MNIST, CIFAR-10/100 and an ImageNet folder.

``load_data(name, root, ...)`` returns a :class:`DataBundle` with train and test loaders, the input shape
and the number of classes. The root comes from the argument, else ``PRUNELAB_DATA``, else ``./data``.
A missing data set raises DataMissingError with one sentence saying how to get it.
"""
from __future__ import annotations

from .datasets import DATASETS, DataBundle, DataSpec, data_spec, load_data, resolve_root

__all__ = ["DATASETS", "DataBundle", "DataSpec", "data_spec", "load_data", "resolve_root"]
