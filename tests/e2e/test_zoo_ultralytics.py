"""YOLOv8n (ultralytics, optional: skipped without it) through a channel method: Torch-Pruning maps some of its
channel groups beyond a layer's outputs; those are blocked at the trace, the rest shrink to the masked outputs."""
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from prunelab import Pruner  # noqa: E402
from prunelab.export import shrink  # noqa: E402


def test_yolov8n_is_cut_where_its_channels_can_be_mapped_and_shrinks_to_the_masked_outputs():
    torch.manual_seed(0)
    model = ultralytics.YOLO("yolov8n.yaml").model.eval()  # built from its yaml: nothing downloaded
    for p in model.parameters():
        p.requires_grad_(True)
    x = torch.randn(1, 3, 64, 64)
    pruner = Pruner(model, "l1_filter", schedule="manual", sparsity=0.5, example_inputs=x)
    pruner.prune(0.5, final=True)
    small = shrink(model, pruner.masks, example_inputs=x)[0]  # float64 equivalence checked inside
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
