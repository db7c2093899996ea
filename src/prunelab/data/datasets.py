"""Loading of each data set into normalized tensors (or, for ImageNet, a folder-backed DataLoader)."""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataMissingError
from .loader import TensorLoader

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
STATS = {  # per-channel mean and std of the training images, pixel scale [0, 1]
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class DataBundle:
    """Train and test loaders plus what a model needs to know about the inputs.

    ``mean``/``std`` are the normalization applied to pixel values in [0, 1] (adversarial attacks use them
    to work in pixel space).
    """

    name: str
    train: Any
    test: Any
    input_shape: tuple[int, ...]
    num_classes: int  # classes, or the vocabulary size of a language model
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task: str = "classification"  # see prunelab.training.tasks
    calibration: Any = None  # a split of its own for calibrated methods (text data sets); None: the training one
    input_dtype: torch.dtype = torch.float32  # token ids: int64


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: the argument, else $PRUNELAB_DATA, else ./data."""
    return Path(root or os.environ.get("PRUNELAB_DATA") or "data").expanduser()


def _normalize(x: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataMissingError(f"{path} is truncated")
    return arr.reshape(dims)


def _digits(root: Path, download: bool, seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))  # fixed split, not the run seed
    n_test = 360
    mean, std = (float(x.mean()),), (float(x.std()),)
    x = _normalize(x, mean, std)
    te, tr = order[:n_test], order[n_test:]
    return (x[tr], y[tr]), (x[te], y[te]), (1, 8, 8), 10, mean, std, False


def _mnist_like(name: str, tv_class: str, debian: Path | None):
    def load(root: Path, download: bool, seed: int):
        import torchvision

        mean, std = STATS[name]
        splits = []
        try:
            for train in (True, False):
                ds = getattr(torchvision.datasets, tv_class)(str(root), train=train, download=download)
                splits.append((ds.data, ds.targets))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError,
                AssertionError, IndexError) as exc:  # AssertionError: raw files of the right size, all zeros
            # torchvision found files it cannot read: a legacy processed/*.pt (loaded weights-only, so a pickle of
            # anything else is refused, safely) or a damaged raw file
            raise DataMissingError(
                f"torchvision could not read {name} under {root / tv_class} ({type(exc).__name__}); delete "
                f"{root / tv_class / 'processed'} if it exists, or replace the damaged files under "
                f"{root / tv_class / 'raw'}") from None
        except RuntimeError:
            splits = []
            if debian is not None and (debian / "train-images-idx3-ubyte.gz").is_file():
                for prefix in ("train", "t10k"):
                    xi = torch.from_numpy(_read_idx(debian / f"{prefix}-images-idx3-ubyte.gz").copy())
                    yi = torch.from_numpy(_read_idx(debian / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
                    splits.append((xi, yi))
            elif download:
                raise DataMissingError(f"{name} is not under {root}/{tv_class}/raw and could not be downloaded "
                                       "(no network here?): copy its files there, or pass --data-root DIR") from None
            else:
                hint = " or `apt-get install dataset-fashion-mnist`" if debian is not None else ""
                raise DataMissingError(
                    f"{name} not found under {root}/{tv_class}/raw: pass --data-root DIR (or set PRUNELAB_DATA) "
                    f"to a folder holding it, add data.download=true where a network is available{hint}") from None
        out = []
        for xs, ys in splits:
            x = _normalize(xs.float().unsqueeze(1) / 255.0, mean, std)
            out.append((x, torch.as_tensor(ys, dtype=torch.int64)))
        return out[0], out[1], (1, 28, 28), 10, mean, std, False

    return load


def _cifar(name: str, tv_class: str, classes: int):
    def load(root: Path, download: bool, seed: int):
        import torchvision

        mean, std = STATS[name]
        out = []
        for train in (True, False):
            try:
                ds = getattr(torchvision.datasets, tv_class)(str(root), train=train, download=download)
            except RuntimeError:
                raise DataMissingError(
                    f"{name} not found under {root}: pass --data-root DIR (or set PRUNELAB_DATA) to a folder "
                    f"holding torchvision's {tv_class} files, or add data.download=true where a network is available"
                ) from None
            x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float() / 255.0
            out.append((_normalize(x, mean, std), torch.tensor(ds.targets, dtype=torch.int64)))
        return out[0], out[1], (3, 32, 32), classes, mean, std, True

    return load


DATASETS: dict[str, Callable] = {
    "digits": _digits,
    "mnist": _mnist_like("mnist", "MNIST", None),
    "fashion_mnist": _mnist_like("fashion_mnist", "FashionMNIST", FASHION_DEBIAN),
    "cifar10": _cifar("cifar10", "CIFAR10", 10),
    "cifar100": _cifar("cifar100", "CIFAR100", 100),
}


TEXT = ("pystdlib", "wikitext2")

#: (input shape, classes) of each image data set, known without reading it (export and bench need no more).
SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 224, 224), 1000)}


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its inputs: shape of one sample, classes (vocabulary), dtype and task."""

    input_shape: tuple[int, ...]
    num_classes: int
    input_dtype: torch.dtype = torch.float32
    task: str = "classification"


def data_spec(name: str, seq_len: int = 128, tokenizer: str | None = None) -> DataSpec | None:
    """The :class:`DataSpec` of a data set without loading it, or None when only loading tells (a text data set
    through a tokenizer, whose vocabulary is the tokenizer's)."""
    if name in TEXT:
        from .text import VOCAB

        return None if tokenizer else DataSpec((seq_len,), VOCAB, torch.int64, "causal_lm")
    if name in SHAPES:
        return DataSpec(*SHAPES[name])
    return None


def load_data(name: str, root: str | None = None, batch_size: int = 128, test_batch_size: int = 1000,
              seed: int = 0, download: bool = False, augment: bool | None = None, workers: int = 4,
              train_subset: int | None = None, shard: tuple[int, int] = (0, 1), seq_len: int = 128,
              tokens: dict[str, int | None] | None = None, tokenizer: str | None = None) -> DataBundle:
    """Load a data set by name. ``augment=None`` uses the data set's standard augmentation.

    ``train_subset`` keeps only the first N training samples (windows, for text) (for quick runs and tests).
    Text data sets (:mod:`prunelab.data.text`) take ``seq_len`` and ``tokens`` ({split: at most this many
    tokens}, ``tokenizer``: a local model folder whose tokenizer to use instead of bytes) and give a causal-LM
    bundle with a calibration split of its own.
    """
    base = resolve_root(root)
    if name == "imagenet":
        return _imagenet(base, batch_size, test_batch_size, workers, shard)
    if name in TEXT:
        from .text import load_text

        splits, vocab = load_text(name, seq_len, tokens or {}, download, tokenizer)
        train = splits["train"]
        if train_subset is not None:
            train = (train[0][:train_subset], train[1][:train_subset])
        return DataBundle(name, TensorLoader(*train, batch_size=batch_size, shuffle=True, seed=seed, shard=shard),
                          TensorLoader(*splits["heldout"], batch_size=test_batch_size), (seq_len,), vocab, (), (),
                          task="causal_lm", calibration=TensorLoader(*splits["calibration"], batch_size=batch_size, shuffle=True,
                                                               seed=seed),
                          input_dtype=torch.int64)
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; valid: {', '.join(sorted(DATASETS) + ['imagenet', *TEXT])}")
    train, test, shape, classes, mean, std, std_aug = DATASETS[name](base, download, seed)
    if train_subset is not None:
        train = (train[0][:train_subset], train[1][:train_subset])
    aug = std_aug if augment is None else augment
    tr = TensorLoader(*train, batch_size=batch_size, shuffle=True, seed=seed,
                      crop_pad=4 if aug else 0, flip=aug, shard=shard)
    te = TensorLoader(*test, batch_size=test_batch_size)
    return DataBundle(name, tr, te, shape, classes, mean, std)


def _imagenet(root: Path, batch_size: int, test_batch_size: int, workers: int, shard) -> DataBundle:
    """ImageNet from ``ROOT/imagenet/{train,val}/CLASS/*.JPEG`` with the standard transforms."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision.datasets import ImageFolder

    folder = root / "imagenet"
    if not (folder / "train").is_dir() or not (folder / "val").is_dir():
        raise DataMissingError(f"imagenet not found: expected {folder}/train and {folder}/val with one folder per class")
    mean, std = STATS["imagenet"]
    norm = T.Normalize(mean, std)
    train_ds = ImageFolder(str(folder / "train"), T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                                                             T.ToTensor(), norm]))
    val_ds = ImageFolder(str(folder / "val"), T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))
    sampler = DistributedSampler(train_ds, num_replicas=shard[1], rank=shard[0]) if shard[1] > 1 else None
    # page-locked batches only where a GPU copies them (non_blocking); workers kept across epochs, since
    # starting them again each epoch re-imports the process and re-opens the folder
    fast = {"pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
    train = DataLoader(train_ds, batch_size, shuffle=sampler is None, sampler=sampler, num_workers=workers,
                       drop_last=True, **fast)
    val = DataLoader(val_ds, test_batch_size, num_workers=workers, **fast)
    train.yields_targets = val.yields_targets = True  # (images, labels), as TensorLoader says of its batches
    return DataBundle("imagenet", train, val, (3, 224, 224), len(train_ds.classes), mean, std)
