"""Export artifacts (dense, sparse with CSR, shrunk, ONNX), sparse inference, bench."""
import pytest
import torch
from torch import nn
from safetensors.torch import load_file, save_file

from prunelab import Pruner
from prunelab.cli import main
from prunelab.errors import CheckpointError, ConfigError
from prunelab.experiment import Runner, load_final, load_recipe, open_finished
from prunelab.export import load_compact
from prunelab.experiment.export_run import bench_run, diagnose, export_run
from prunelab.export.compact import encode_tensor, decode_tensor
from prunelab.export.shrunk import load_shrunk
from prunelab.export.sparse_linear import SparseLinear, sparsify_linear
from prunelab.models import build_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for key, over in {"sparse": ["prune.sparsity=0.98"],
                      "channels": ["prune.method=l1_filter", "prune.sparsity=0.5", "prune.schedule.name=oneshot"],
                      "dense": ["prune=null"]}.items():
        recipe = load_recipe("quickstart", ["train.epochs=1", "prune.schedule.rounds=2", "prune.retrain.epochs=1"]
                             + over)
        Runner(recipe, root / key, progress=False, log=lambda m: None, share_dense=False).run()
        out[key] = root / key
    return out


def _final(run):
    return load_final(open_finished(run))


def test_csr_format_round_trip_and_choice():
    w = torch.randn(40, 300)
    m = torch.rand(40, 300) < 0.01
    parts, meta = encode_tensor(w * m, m)
    assert meta["format"] == "csr" and parts["col"].dtype == torch.int16
    back, mask = decode_tensor(parts, meta)
    assert torch.equal(mask, m) and torch.equal(back, w * m)
    parts, meta = encode_tensor(w, torch.rand(40, 300) < 0.5)
    assert meta["format"] == "bitmask"


def test_every_format_round_trips_exactly(runs, tmp_path):
    model, masks = _final(runs["sparse"])
    dense = export_run(runs["sparse"], "dense", tmp_path / "d.safetensors")
    fresh = build_model("lenet300_100", (1, 8, 8), 10)
    fresh.load_state_dict(load_file(str(dense)))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    sparse = export_run(runs["sparse"], "sparse", tmp_path / "s.safetensors")
    state, m2 = load_compact(sparse)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(m2[k], masks[k]) for k in masks)
    assert sparse.stat().st_size * 10 < dense.stat().st_size  # 98% sparse: CSR / bitmask pay
    cmodel, _ = _final(runs["channels"])
    shrunk = export_run(runs["channels"], "shrunk", tmp_path / "k.safetensors")
    small, _ = load_shrunk(shrunk)
    x = torch.randn(16, 1, 8, 8)
    cmodel.eval()
    assert (small(x) - cmodel(x)).abs().max() <= 1e-5


def test_onnx_outputs_match(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    path = export_run(runs["channels"], "onnx", tmp_path / "m.onnx")
    small, _ = load_shrunk(runs["channels"] / "stages" / "shrunk" / "shrunk.safetensors")
    x = torch.randn(7, 1, 8, 8)  # another batch size than at export: the batch dimension is dynamic
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - small.eval()(x).detach().numpy()).max() <= 1e-4


def test_refusals(runs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="no masks"):
        export_run(runs["dense"], "sparse")
    with pytest.raises(ConfigError, match="removed no channels"):
        export_run(runs["sparse"], "shrunk")
    assert main(["export", str(runs["dense"]), "--format", "sparse"]) == 2
    assert "no masks" in capsys.readouterr().err
    path = export_run(runs["sparse"], "sparse", tmp_path / "s.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    key = next(k for k in tensors if k.endswith("::values"))
    tensors[key] = tensors[key].clone()
    tensors[key][0] += 1.0  # tampered value, shapes and counts intact
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_compact(tmp_path / "t.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-64])
    with pytest.raises(CheckpointError):
        load_compact(tmp_path / "cut.safetensors")


def test_compact_file_loads_into_a_model_in_place_or_not_at_all(tmp_path):
    import json

    from safetensors import safe_open

    from prunelab.export import save_compact

    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10)
    p = Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=0.9)
    save_compact(model, p.masks, tmp_path / "m.sparse")
    torch.manual_seed(1)
    fresh = build_model("lenet5", (1, 28, 28), 10)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    own = dict(fresh.named_parameters())
    state, masks = load_compact(tmp_path / "m.sparse", into=fresh)
    assert masks.equal(p.masks)
    for k, v in model.state_dict().items():  # the values are the saved ones, in the model's own tensors
        assert torch.equal(fresh.state_dict()[k], v), k
        if k in own:
            assert state[k].data_ptr() == own[k].data_ptr()
    # a manifest that does not fit its tensors: refused before anything is written into the model
    tensors = load_file(str(tmp_path / "m.sparse"))
    with safe_open(str(tmp_path / "m.sparse"), "pt") as f:
        meta = f.metadata()
    manifest = json.loads(meta["manifest"])
    last = [k for k, e in manifest.items() if e.get("format") not in ("dense", "alias")][-1]
    manifest[last]["count"] += 1
    save_file(tensors, str(tmp_path / "bad.sparse"), metadata={**meta, "manifest": json.dumps(manifest)})
    torch.manual_seed(1)
    other = build_model("lenet5", (1, 28, 28), 10)
    with pytest.raises(CheckpointError, match="damaged"):
        load_compact(tmp_path / "bad.sparse", into=other)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
    wide = build_model("lenet5", (1, 32, 32), 10)  # another fc1 shape
    with pytest.raises(CheckpointError, match="another shape"):
        load_compact(tmp_path / "m.sparse", into=wide)
    with pytest.raises(CheckpointError, match="does not fit"):  # other names altogether
        load_compact(tmp_path / "m.sparse", into=build_model("lenet300_100", (1, 28, 28), 10))


def test_sparse_linear_equals_dense():
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10).eval()
    p = Pruner(model, method={"name": "magnitude", "allocation": "global"}, sparsity=0.95)
    fast, replaced = sparsify_linear(model, p.masks)
    assert replaced == ["fc1", "fc2", "fc3"] and isinstance(fast.fc1, SparseLinear)
    for b in (1, 33):
        x = torch.randn(b, 1, 28, 28)
        assert torch.allclose(fast(x), model(x), atol=1e-5)


def test_bench_rows_and_diagnosis(runs):
    out = bench_run(runs["channels"], repeats=3)
    names = [r["artifact"] for r in out["rows"]]
    assert names == ["unpruned", "dense with zeros", "csr linear", "chosen kernels", "shrunk"]
    assert set(out["kernels"]) == set(out["csr_layers"]) and all(set(k) == {"b1", "b64"} for k in out["kernels"].values())
    shrunk = out["rows"][-1]
    assert shrunk["flop_reduction"] > 1.5 and shrunk["bytes"] < out["rows"][0]["bytes"]
    assert "unstructured zeros" in diagnose("dense with zeros", 1.0, 5.0, 0.8, 64)
    assert "too low" in diagnose("csr linear", 1.0, 2.0, 0.5, 64)
    assert "batch 1" in diagnose("csr linear", 0.5, 20.0, 0.95, 1)
    assert diagnose("shrunk", 1.9, 2.0, 0.5, 64) == ""


def test_each_linear_gets_the_kernel_measured_fastest_and_the_outputs_stay():
    from prunelab.export.sparse_linear import KERNELS, ScipyLinear, choose_linear_kernels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    masks = Pruner(model, "magnitude", sparsity=0.9, schedule="manual").prune(0.9)
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = model(x)
        fast, choices = choose_linear_kernels(model, masks, batch=3, repeats=3)
        assert torch.allclose(fast(x), ref, atol=1e-5)
        lin = nn.Linear(64, 128)
        assert torch.allclose(ScipyLinear(lin)(x), lin(x), atol=1e-5)
    assert set(choices) == {"0", "2"}
    for layer, c in choices.items():
        assert set(c["us"]) == set(KERNELS) and c["us"][c["kernel"]] == min(c["us"].values())
        assert c["sparsity"] == pytest.approx(0.9, abs=0.01)
        assert (type(fast.get_submodule(layer)).__name__ == "Linear") == (c["kernel"] == "dense")


def test_onnx_falls_back_to_the_classic_exporter_and_names_both_causes(tmp_path):
    pytest.importorskip("onnxruntime")
    from prunelab.export.onnx import export_onnx

    class Branchy(nn.Module):  # a data-dependent branch: torch.export refuses, TorchScript records one path
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            y = self.fc(x)
            return y if bool(x.abs().sum() > -1) else -y

    diff = export_onnx(Branchy(), torch.randn(2, 4), tmp_path / "m.onnx")
    assert diff < 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0

    class Opaque(nn.Module):  # refuses any exporter
        def forward(self, x):
            if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.compiler.is_compiling():
                raise RuntimeError("\x1b[31mnot exportable\x1b[0m\nsecond line")
            return x * 2

    with pytest.raises(ConfigError) as err:
        export_onnx(Opaque(), torch.randn(2, 4), tmp_path / "o.onnx")
    msg = str(err.value)
    assert "torch.export: " in msg and "; the classic exporter: RuntimeError: not exportable" in msg
    assert "\x1b[" not in msg
    assert "\n" not in msg and not (tmp_path / "o.onnx").exists()
