import os

import pytest
import torch

from prunelab import ConfigError, DataMissingError
from prunelab.data import load_data
from prunelab.data.loader import TensorLoader
from prunelab.models import build_model

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "MNIST", "raw")


@pytest.mark.parametrize("name,shape,count", [
    ("lenet300_100", (1, 28, 28), 266_610), ("lenet5", (1, 28, 28), 431_080),
    ("vgg16", (3, 32, 32), 14_724_042), ("vgg19", (3, 32, 32), 20_035_018),
    ("resnet20", (3, 32, 32), 269_722), ("resnet32", (3, 32, 32), 464_154),
    ("resnet56", (3, 32, 32), 853_018), ("resnet110", (3, 32, 32), 1_727_962),
])
def test_parameter_counts(name, shape, count):
    model = build_model(name, shape, 10)
    assert sum(p.numel() for p in model.parameters()) == count
    if count < 1_000_000:
        assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_torchvision_models_and_bad_names():
    m = build_model("torchvision:resnet18", (3, 32, 32), 7)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("lenet6", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="torchvision has no model"):
        build_model("torchvision:nonet", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="16x16"):
        build_model("lenet5", (1, 8, 8), 10)


def test_digits_offline_and_missing_data(tmp_path):
    d = load_data("digits", batch_size=100)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.train.x) + len(d.test.x) == 1797
    with pytest.raises(DataMissingError, match="--data-root"):
        load_data("mnist", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown data set"):
        load_data("svhn")


def test_cifar_through_torchvision_loading_path(tmp_path, monkeypatch):
    """Small fake CIFAR-10 files of the real format, read through torchvision's own loader."""
    import pickle

    import numpy as np
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # md5s of fakes differ
    d = load_data("cifar10", str(tmp_path), batch_size=8)
    assert d.input_shape == (3, 32, 32) and len(d.train.x) == 20 and len(d.test.x) == 4
    x, y = next(iter(d.train))
    assert x.shape == (8, 3, 32, 32)


def test_loader_is_deterministic_per_epoch_and_augments():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2 * 3, 1, 4, 4)[:6]
    y = torch.arange(6)
    a = TensorLoader(x, y, 4, shuffle=True, seed=1, crop_pad=1, flip=True)
    b = TensorLoader(x, y, 4, shuffle=True, seed=1, crop_pad=1, flip=True)
    a.set_epoch(2); b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(3)
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, b))


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="shared MNIST not present")
def test_mnist_from_shared_data():
    d = load_data("mnist", os.path.dirname(os.path.dirname(SHARED_MNIST)))
    assert len(d.train.x) == 60000 and len(d.test.x) == 10000
    assert abs(d.train.x.mean().item()) < 0.01


def test_an_unreadable_torchvision_file_is_one_sentence_and_never_executes(tmp_path, capsys):
    """A legacy MNIST/processed/*.pt holding a pickle that would run code: torchvision loads it weights-only
    (refused); prunelab says which folder and what to do."""
    import pickle

    from prunelab.data import load_data
    from prunelab.errors import DataMissingError

    class Evil:
        def __reduce__(self):
            return (print, ("EXECUTED",))
    (tmp_path / "MNIST" / "processed").mkdir(parents=True)
    for f in ("training.pt", "test.pt"):
        (tmp_path / "MNIST" / "processed" / f).write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(DataMissingError, match=r"torchvision could not read mnist .* delete .*processed"):
        load_data("mnist", str(tmp_path))
    assert "EXECUTED" not in capsys.readouterr().out


def test_imagenet_folders_load_with_the_standard_transforms_and_device_aware_loaders(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, cls in enumerate(("n01", "n02")):
            (tmp_path / "imagenet" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (300, 260), (40 * c, 80 * i, 120)).save(tmp_path / "imagenet" / split / cls / f"{i}.png")
    bundle = load_data("imagenet", str(tmp_path), batch_size=2, test_batch_size=4, workers=0)
    x, y = next(iter(bundle.train))
    assert x.shape == (2, 3, 224, 224) and bundle.num_classes == 2 and set(y.tolist()) <= {0, 1}
    xv, yv = next(iter(bundle.test))
    assert xv.shape == (4, 3, 224, 224) and yv.tolist() == [0, 0, 1, 1]
    for loader in (bundle.train, bundle.test):  # pinned only where a GPU copies the batches
        assert loader.pin_memory == torch.cuda.is_available() and not loader.persistent_workers
    with pytest.raises(DataMissingError, match="imagenet not found"):
        load_data("imagenet", str(tmp_path / "nowhere"))
