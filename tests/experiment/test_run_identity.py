"""A run's identity and integrity: what verify vouches for is covered by digests, the data root is not part of a
run, and numbers the engine cannot rank (NaN) are refused rather than turned into masks."""
import json
import shutil

import pytest
import torch
from torch import nn

import prunelab
from prunelab.cli import main
from prunelab.experiment import load_recipe, run_dir_for
from prunelab.experiment.verify import comparable_contents

FAST = ["train.epochs=1", "prune.schedule.rounds=2", "prune.retrain.epochs=1"]


def _line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab: error: "), err
    return err[0]


def test_edited_results_and_recipes_are_refused_and_a_deleted_init_is_rebuilt(tmp_path, capsys):
    args = ["run", *FAST, "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    run = run_dir_for(load_recipe("quickstart", FAST), tmp_path)
    reference = comparable_contents(run)
    summary = run / "summary.json"
    good = summary.read_text()
    summary.write_text(good.replace('"pruned_acc": 0.', '"pruned_acc": 0.9'))  # a better result, by hand
    assert main(["verify", str(run)]) == 1
    assert "summary.json was changed after the run wrote it" in capsys.readouterr().out
    assert main(["show", str(run)]) == 2 and "summary.json was changed" in _line(capsys)
    summary.write_text(good)
    assert main(["verify", str(run)]) == 0
    seal = run / "seal.json"
    sealed = seal.read_text()
    seal.write_text('{"summary.json": 5}')
    assert main(["show", str(run)]) == 2 and "seal.json is malformed at summary.json" in _line(capsys)
    seal.write_text(sealed)
    capsys.readouterr()

    recipe = run / "recipe.yaml"
    text = recipe.read_text()
    recipe.write_text(text.replace("sparsity: 0.95", "sparsity: 0.5"))
    assert main(["show", str(run)]) == 2 and "is not the recipe this run was made from" in _line(capsys)
    recipe.write_text(text.replace("description:", "description: edited words,"))  # words are not identity
    assert main(["show", str(run)]) == 0
    recipe.write_text(text)
    capsys.readouterr()

    shutil.rmtree(run / "init")
    assert main(["verify", str(run)]) == 1
    capsys.readouterr()
    assert main(args) == 0  # the dense stage is not done without its init: rebuilt, and the run is whole again
    assert "stage dense: state.json is missing" in capsys.readouterr().out
    assert main(["verify", str(run)]) == 0 and main(["export", str(run)]) == 0
    assert comparable_contents(run).keys() >= reference.keys()
    assert {k: v for k, v in comparable_contents(run).items() if k in reference and not k.startswith("export")} \
        == reference


def test_the_data_root_is_not_part_of_a_run(tmp_path, monkeypatch, capsys):
    """The same data found under another path is the same run (its dense training reused); a run records an
    absolute root, so commands find its data from any folder; --data-root and PRUNELAB_DATA override it; and
    export builds the model without loading the training set."""
    work = tmp_path / "work"
    (work / "d1").mkdir(parents=True)
    monkeypatch.chdir(work)
    args = ["run", *FAST, "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    assert main(args + ["--data-root", "d1"]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--data-root", str(tmp_path / "elsewhere")]) == 0
    second = capsys.readouterr().out
    (run,) = (tmp_path / "runs").glob("quickstart-*")
    assert first.count("finished in") >= 3 and second.count("done, skipped") == 3
    assert load_recipe(str(run / "recipe.yaml")).data.root == str(work / "d1")
    monkeypatch.chdir(tmp_path)
    import prunelab.data.datasets as datasets

    def no_loading(*a, **k):
        raise AssertionError("export loaded the data set")
    monkeypatch.setattr(datasets, "load_data", no_loading)
    monkeypatch.setattr("prunelab.experiment.context.load_data", no_loading)
    assert main(["export", str(run), "--format", "onnx" if _has_onnx() else "sparse"]) == 0
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    from prunelab.experiment import RunContext

    assert RunContext.from_folder(run).recipe.data.root == str(tmp_path / "env")
    assert RunContext.from_folder(run, data_root="x").recipe.data.root == "x"


def _has_onnx() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_run_folder_moved_elsewhere_is_still_that_run(tmp_path, capsys):
    assert main(["run", *FAST, "--runs-dir", str(tmp_path / "a"), "--no-progress"]) == 0
    (run,) = (tmp_path / "a").glob("quickstart-*")
    moved = tmp_path / "b" / run.name
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert main(["verify", str(moved)]) == 0 and main(["show", str(moved)]) == 0
    capsys.readouterr()
    assert main(["run", *FAST, "--runs-dir", str(tmp_path / "b"), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 3  # dense and two rounds
    reference = comparable_contents(moved)
    stage = moved / "stages" / "round_01"
    shutil.rmtree(stage)
    stage.write_text("a user's file")  # in the way of a stage: never removed, named with what to do
    args = ["run", *FAST, "--runs-dir", str(tmp_path / "b"), "--no-progress"]
    for argv in (args, ["show", str(moved)]):
        assert main(argv) == 2 and "is a file or a link where the run's folder belongs" in _line(capsys)
    assert stage.read_text() == "a user's file"
    stage.unlink()  # gone: it and the stage computed from it are recomputed, to the same bytes
    assert main(args) == 0
    assert "recomputing it and the stages after it" in capsys.readouterr().out
    assert comparable_contents(moved) == reference


def test_fp16_adam_keeps_pruned_weights_and_their_state_at_exactly_zero():
    """In float16 Adam's eps underflows, so the update of a weight whose gradient and moments are zero is
    0 / 0 = NaN: masking by a product would keep it; the Pruner sets pruned values to zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).half()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner = prunelab.Pruner(model, sparsity=0.5, schedule="manual")
    pruner.prune(0.5, opt)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 16).half()).float().square().mean().backward()
        pruner.after_backward()
        opt.step()
        pruner.step(opt)
    params = dict(model.named_parameters())
    for name, keep in pruner.masks.items():
        pruned = params[name].detach()[~keep]
        assert pruned.numel() and torch.equal(pruned, torch.zeros_like(pruned)), name  # NaN != 0: fails on NaN
        for v in opt.state[params[name]].values():
            if v.shape == keep.shape:
                assert torch.equal(v[~keep], torch.zeros_like(v[~keep]))


def test_non_finite_weights_and_calibration_inputs_are_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(prunelab.ConfigError, match="weight 2.weight holds NaN"):
        prunelab.Pruner(model, method={"name": "magnitude", "allocation": "global"}, sparsity=0.5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    pruner = prunelab.Pruner(model, method="wanda", sparsity=0.5, schedule="manual")
    x = torch.randn(16, 4)
    x[3, 1] = float("inf")
    pruner.calibrate([x])
    with pytest.raises(prunelab.ConfigError, match="calibration inputs reaching 0.weight contain NaN"):
        pruner.prune(0.5)


def test_api_arguments_are_one_sentence(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    cases = [
        (lambda: prunelab.Pruner(model, sparsity="0.5"), "sparsity must be a number"),
        (lambda: prunelab.Pruner(model, sparsity=0.5, seed="abc"), "seed must be an integer"),
        (lambda: prunelab.Pruner(model, sparsity=0.5, schedule="manual").step(42), "takes the optimizer"),
        (lambda: prunelab.Pruner(nn.Linear(0, 5), sparsity=0.5), "has no elements"),
        (lambda: prunelab.Pruner(nn.ReLU(), sparsity=0.5), "no prunable weights matched"),
        (lambda: prunelab.Pruner(model, sparsity=0.5).masks.save(tmp_path), "is a folder, not a file"),
        (lambda: prunelab.set_threads(threads=0), "threads must be an integer"),
        (lambda: prunelab.Pruner(model, sparsity=0.5, schedule={"name": "iterative", "rounds": 10 ** 9}),
         "rounds must be an integer from 1 to 100,000"),  # was a list of a billion events, memory gone
        (lambda: prunelab.Pruner(model, sparsity=0.5, schedule={"name": "cubic", "end": 10 ** 12, "frequency": 1}),
         "more than 100,000"),
        (lambda: prunelab.Pruner(model, sparsity=0.5).prune_event("a"), "there is no event a"),
        (lambda: prunelab.Masks({"w": 1}), "must be a tensor of booleans"),
    ]
    with torch.device("meta"):
        meta = nn.Linear(3, 3)
    cases.append((lambda: prunelab.Pruner(meta, sparsity=0.5), "on the meta device"))
    for fn, needle in cases:
        with pytest.raises(prunelab.PrunelabError, match=needle):
            fn()
    pruner = prunelab.Pruner(model, sparsity=0.5, schedule="manual")
    model[2] = nn.Linear(8, 2)
    with pytest.raises(prunelab.ConfigError, match="2.weight is not the parameter this Pruner was built on"):
        pruner.prune(0.5)
    from prunelab.export import shrink

    other = prunelab.Pruner(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), sparsity=0.5).masks
    with pytest.raises(prunelab.PrunelabError, match="masks of another model"):
        shrink(model, other, torch.zeros(1, 4))


def test_set_threads_picks_one_thread_for_small_work_and_honours_a_count(monkeypatch):
    from prunelab.errors import ConfigError

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the policy is what is tested; the variable would rule
    try:
        n, why = prunelab.set_threads(nn.Linear(64, 64), input_shape=(64,), batch_size=32)
        assert n == 1 == torch.get_num_threads() and "small work" in why
        assert prunelab.set_threads(threads=2) == (2, "as asked") and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert prunelab.set_threads(nn.Linear(64, 64), input_shape=(64,)) == (2, "OMP_NUM_THREADS is set")
        monkeypatch.delenv("OMP_NUM_THREADS")
        for shape, batch, needle in [((-3,), 1, "positive integers"), ((10 ** 6, 10 ** 6), 1, "pass threads=N"),
                                     ((64,), 0, "batch_size must be a positive integer"), ((), 1, "positive")]:
            with pytest.raises(ConfigError, match=needle):
                prunelab.set_threads(nn.Linear(64, 64), input_shape=shape, batch_size=batch)
    finally:
        torch.set_num_threads(before)


def test_a_state_file_without_its_file_list_is_damage(tmp_path):
    from prunelab.experiment.checkpoint import save_checkpoint, verify_checkpoint

    save_checkpoint(tmp_path, nn.Linear(2, 2))
    assert verify_checkpoint(tmp_path) == []
    state = json.loads((tmp_path / "state.json").read_text())
    state["files"]["../../x"] = {"sha256": "0" * 64, "bytes": 1}  # nothing outside the folder is ever read
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert "lists a file outside its folder ('../../x')" in verify_checkpoint(tmp_path)[0]
    del state["files"]["../../x"]
    del state["files"]["model.safetensors"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert any("model.safetensors is not covered" in p for p in verify_checkpoint(tmp_path))
    del state["files"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert verify_checkpoint(tmp_path) == ["state.json lists no files, so nothing it describes can be checked "
                                           "(edited or damaged)"]
    (tmp_path / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested deeper" in verify_checkpoint(tmp_path)[0]


def _tiny_mnist(root, n_train=64, n_test=32):
    """MNIST's own file format (IDX), a few random images: what torchvision reads under ROOT/MNIST/raw."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
            + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    return raw


def test_a_run_continues_only_on_the_data_it_was_trained_on(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _tiny_mnist(a)
    args = ["run", "lenet300_100_mnist_magnitude", "train.epochs=1", "prune.schedule.rounds=1",
            "prune.retrain.epochs=1", "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    assert main(args + ["--data-root", str(a), "--stop-after", "dense"]) == 0
    shutil.copytree(a, b)  # the same files elsewhere: the same run, its dense training kept
    capsys.readouterr()
    assert main(args + ["--data-root", str(b)]) == 0
    assert "stage dense: done, skipped" in capsys.readouterr().out
    labels = b / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-4] + b"\x00" * 8)  # other data under the same name
    assert main(args + ["--data-root", str(b)]) == 2
    assert "is not the data this run was trained on (files t10k-labels-idx1-ubyte: 44 bytes, 40 bytes" in \
        _line(capsys)
