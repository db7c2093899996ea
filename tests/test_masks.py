import pytest
import torch

from prunelab import CheckpointError, Masks
from prunelab.masks import structure


def test_stats_on_hand_made_mask():
    m = torch.ones(2, 3, 2, 2, dtype=torch.bool)
    m[0] = False            # filter 0 empty
    m[1, 1] = False         # kernel (1, 1) empty -> input channel 1 empty too (filter 0 already empty)
    masks = Masks({"w": m, "v": torch.tensor([[True, False], [False, False]])})
    assert masks.numel() == 24 + 4
    assert masks.nonzero() == 8 + 1
    assert masks.density() == pytest.approx(9 / 28)
    assert masks.compression_ratio() == pytest.approx(28 / 9)
    s = structure(m)
    assert s["filter_sparsity"] == pytest.approx(0.5)
    assert s["input_channel_sparsity"] == pytest.approx(1 / 3)
    assert s["kernel_sparsity"] == pytest.approx(4 / 6)
    lin = structure(masks["v"])
    assert lin["filter_sparsity"] == 0.5 and lin["input_channel_sparsity"] == 0.5 and lin["kernel_sparsity"] is None


def test_intersection_union_and_roundtrip(tmp_path):
    a = Masks({"x": torch.tensor([True, True, False, False])})
    b = Masks({"x": torch.tensor([True, False, True, False])})
    assert (a & b)["x"].tolist() == [True, False, False, False]
    assert (a | b)["x"].tolist() == [True, True, True, False]
    path = tmp_path / "m.safetensors"
    a.save(path)
    assert Masks.load(path).equal(a)
    with pytest.raises(ValueError):
        a & Masks({"y": torch.tensor([True])})


def test_corrupt_mask_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    Masks({"x": torch.ones(100, dtype=torch.bool)}).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        Masks.load(path)
    with pytest.raises(CheckpointError):
        Masks.load(tmp_path / "missing.safetensors")
