"""Recipes, resumable runs and the command line."""
import json
import subprocess
import sys

import pytest

from prunelab.cli import main
from prunelab.experiment import Runner, load_recipe, run_dir_for

TINY = ["train.epochs=2", "prune.schedule.rounds=3", "prune.retrain.epochs=1", "prune.sparsity=0.9"]


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_resumed_run_is_bit_identical(tmp_path):
    recipe = load_recipe("quickstart", TINY)
    a = Runner(recipe, tmp_path / "a", progress=False, log=lambda s: None, share_dense=False).run()
    b_dir = tmp_path / "b"
    assert Runner(recipe, b_dir, progress=False, log=lambda s: None, stop_after="round_01").run() == {}
    Runner(recipe, b_dir, progress=False, log=lambda s: None, stop_after="round_02").run()
    (b_dir / "stages" / "round_02" / "state.json").unlink()  # as if killed while writing round_02
    b = Runner(recipe, b_dir, progress=False, log=lambda s: None).run()
    for stage in ("dense", "round_01", "round_02", "round_03"):
        files = sorted((tmp_path / "a" / "stages" / stage).glob("*.safetensors"))
        assert {f.name for f in files} >= {"model.safetensors", "optimizer.safetensors", "rng.safetensors"}
        for f in files:  # every tensors file byte for byte, masks and their metadata included
            assert f.read_bytes() == (b_dir / "stages" / stage / f.name).read_bytes(), (stage, f.name)
    assert a["pruned_acc"] == b["pruned_acc"] and a["layers"] == b["layers"]
    assert a["sparsity_prunable"] == pytest.approx(0.9, abs=1e-4)
    assert (b_dir / "metrics.jsonl").read_text().count('"stage": "round_02", "epoch"') == 1


def test_summary_contents_and_show(tmp_path, capsys):
    assert main(["run", *TINY, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = run_dir_for(load_recipe("quickstart", TINY), tmp_path)
    s = json.loads((run / "summary.json").read_text())
    for key in ("dense_acc", "pruned_acc", "layers", "params_total", "params_nonzero", "compression_prunable",
                "compression_model", "flops_dense", "flops_nonzero", "wall_seconds"):
        assert key in s
    assert s["params_total"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert s["compression_prunable"] == pytest.approx(10, rel=0.01)
    assert s["flops_nonzero"] == s["nonzero_prunable"]  # an MLP on one input: one MAC per live weight
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "per-layer sparsity" in out and "fc1.weight" in out
    from prunelab.experiment import RunContext

    train = RunContext.from_folder(run).data.train  # what each stage trained on: 2 epochs dense, 1 a round
    dense, first = s["stages"][0], s["stages"][1]
    assert (dense["samples"], dense["steps"]) == (2 * train.num_samples, 2 * len(train))
    assert (first["samples"], first["steps"]) == (train.num_samples, len(train))
    assert f"{dense['samples']:,} samples ({dense['steps']:,} steps)" in out
    assert main(["eval", str(run)]) == 2 and "measures language models" in _err_line(capsys)
    # the same recipe again: every stage is skipped
    assert main(["run", *TINY, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("skipped") == 4


def test_recipes_lists_builtins(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("quickstart", "lenet300_100_mnist_magnitude", "lenet5_mnist_magnitude"):
        assert name in out


@pytest.mark.parametrize("argv,needle", [
    (["run", "prune.method=magnitud"], "unknown method 'magnitud'"),
    (["run", "prune.sparsity=1.0"], "prune.sparsity"),
    (["run", "prune.sparsity=-0.5"], "prune.sparsity"),
    (["run", "train.epoch=3"], "recipe key train.epoch: unknown key"),
    (["run", "train.lr=fast"], "train.lr"),
    (["run", "no_such_recipe"], "no recipe 'no_such_recipe'"),
    (["run", "missing.yaml"], "missing.yaml does not exist"),
    (["run", "data.name=mnist", "--data-root", "/nonexistent"], "mnist not found"),
    (["show", "/nonexistent/run"], "does not exist"),
    (["run", "prune.method=wanda", "prune.schedule.name=cubic"], "in a recipe use schedule oneshot or iterative"),
    (["run", "prune.method={name: sparsegpt, granularity: filter}"], "sparsegpt chooses single weights"),
    (["run", "model.name=hf:no_such_type"], "bad Hugging Face model hf:no_such_type"),
    (["run", "train.lr=.inf"], "train.lr: Input should be a finite number"),
    (["run", "prune.retrain.lr=.nan"], "prune.retrain.lr: Input should be a finite number"),
    (["run", "prune.method={name: sparsegpt, percdamp: .inf}"], "percdamp must be a finite number"),
    (["run", "prune.retrain.train_tokens=0"], "prune.retrain.train_tokens: Input should be greater than or equal to 1"),
    (["run", "train.max_steps=0"], "train.max_steps: Input should be greater than or equal to 1"),
    (["run", "train.precision=fp16"], "train.precision fp16 needs a CUDA device"),
    (["run", "train.precision=fp8"], "train.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
    (["run", "device=cuda"], "CUDA is not available here"),
    (["run", "train.max_steps=5", "train.train_tokens=100"], "as max_steps or as train_tokens, not both"),
    (["run", "train.epochs=0", "prune.distill={alpha: 0.5}"], "prune.distill needs a trained dense model"),
    (["run", "prune.distill={hidden: [fc9]}"], "distillation hidden layer 'fc9' names no module of the model"),
    (["run", "model.name=lenet5", "data.name=pystdlib"], "lenet5 is an image model but data pystdlib is text"),
    (["run", "gpt2_pystdlib_dense", "model.kwargs.n_positions=16", "data.seq_len=32"],
     "data.seq_len 32 is longer than the 16 positions"),
    (["run", "gpt2_pystdlib_dense", "model.kwargs.n_embd_typo=8"], "hf:gpt2 has no config option n_embd_typo"),
    (["run", "gpt2_pystdlib_dense", "model.name=hf:mistral", "data.seq_len=16", "model.kwargs={hidden_size: 16, "
      "num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 4, intermediate_size: 32}"],
     "model hf:mistral cannot run on one input of pystdlib"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    assert main(argv + (["--runs-dir", str(tmp_path)] if argv[0] == "run" else [])) == 2
    assert needle in _err_line(capsys)


def test_corrupt_checkpoint_is_recomputed_or_refused(tmp_path, capsys):
    """A damaged file its state lists is recomputed, and so is a checkpoint whose state no longer lists its files
    (that is damage, not a pass); an edited summary is refused in one line."""
    args = ["run", *TINY, "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(args + ["--stop-after", "dense"]) == 0
    run = run_dir_for(load_recipe("quickstart", TINY), tmp_path)
    weights = run / "stages" / "dense" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    capsys.readouterr()
    assert main(args + ["--stop-after", "dense"]) == 0
    assert "stage dense: model.safetensors has 100 bytes where" in capsys.readouterr().out
    assert weights.read_bytes() == good
    state = run / "stages" / "dense" / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "files"}))
    weights.write_bytes(good[:100])
    capsys.readouterr()
    assert main(args) == 0
    assert "stage dense: state.json lists no files" in capsys.readouterr().out
    assert weights.read_bytes() == good
    (run / "summary.json").write_text("{ truncated")
    assert main(["show", str(run)]) == 2
    assert "summary.json was changed after the run wrote it" in _err_line(capsys)


@pytest.mark.subprocess
def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunelab", "run", "prune.sparsity=2"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra,stages", [
    (["prune.schedule.name=cubic", "prune.schedule.end_epoch=1", "prune.schedule.frequency_steps=5"],
     ["dense", "gradual"]),
    (["prune.schedule.name=oneshot", "prune.method.criterion=taylor", "prune.method.granularity=filter"],
     ["dense", "round_01"]),
])
def test_gradual_and_oneshot_taylor_runs(tmp_path, extra, stages):
    recipe = load_recipe("quickstart", ["train.epochs=1", "prune.retrain.epochs=2", "prune.sparsity=0.8", *extra])
    s = Runner(recipe, tmp_path / "r", progress=False, log=lambda m: None).run()
    assert [row["stage"] for row in s["stages"]] == stages
    assert s["sparsity_prunable"] == pytest.approx(0.8, abs=0.02)
    if "prune.method.granularity=filter" in extra:
        assert all(row["filter_sparsity"] == pytest.approx(row["sparsity"]) for row in s["layers"])


@pytest.mark.parametrize("content,needle", [('{"dense_acc": "x"}', "summary.json is malformed at recipe"),
                                            ("{not json", "summary.json is not valid JSON")])
def test_show_refuses_a_malformed_summary_in_one_line(tmp_path, capsys, content, needle):
    from prunelab.experiment.paths import RunPaths
    from prunelab.experiment.records import seal

    (tmp_path / "recipe.yaml").write_text("name: x\n")
    (tmp_path / "summary.json").write_text(content)
    seal(RunPaths(tmp_path))  # as if the run had written it so: the record itself is checked
    assert main(["show", str(tmp_path)]) == 2
    assert needle in _err_line(capsys)
    (tmp_path / "summary.json").write_text(content + " ")  # edited after the seal: refused for that first
    assert main(["show", str(tmp_path)]) == 2
    assert "summary.json was changed after the run wrote it" in _err_line(capsys)


def test_a_damaged_artifact_is_found_named_and_recomputed(tmp_path, capsys):
    """verify, show and export name the missing or truncated file; run recomputes that stage and the later
    ones (deterministically: the same bytes again) and touches nothing before it."""
    assert main(["run", *TINY, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = next(tmp_path.glob("quickstart-*"))
    stages = run / "stages"
    before = {f: f.read_bytes() for f in stages.rglob("*.safetensors")}
    dense_state = (stages / "dense" / "state.json").read_bytes()
    capsys.readouterr()
    assert main(["verify", str(run)]) == 0
    (stages / "round_02" / "masks.safetensors").unlink()
    assert main(["verify", str(run)]) == 1
    assert "stages/round_02: masks.safetensors is missing" in capsys.readouterr().out
    for argv in (["show", str(run)], ["export", str(run), "--format", "sparse"]):
        assert main(argv) == 2
        assert "round_02: masks.safetensors is missing; run `prunelab run" in _err_line(capsys)
    assert main(["run", *TINY, "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    assert "stage round_02: masks.safetensors is missing" in capsys.readouterr().out
    assert {f: f.read_bytes() for f in stages.rglob("*.safetensors")} == before
    assert (stages / "dense" / "state.json").read_bytes() == dense_state  # not recomputed
    final = stages / "round_03" / "model.safetensors"
    final.write_bytes(final.read_bytes()[:-100])
    assert main(["show", str(run)]) == 2
    assert "model.safetensors has" in _err_line(capsys)


def test_threads_are_chosen_for_the_work(tmp_path, monkeypatch):
    from prunelab.experiment import RunContext
    from prunelab.experiment.run_threads import choose_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ctx = RunContext(load_recipe("quickstart"), tmp_path / "q")
    n, why = choose_threads(ctx)
    assert n == 1 and why.startswith("small work (3M multiply-accumulates per batch)")  # 64 x (64*300+300*100+100*10)
    assert choose_threads(ctx, 3) == (3, "as asked")
    assert choose_threads(RunContext(load_recipe("quickstart", ["threads=2"]), tmp_path / "r")) == (2, "as the recipe asks")
    big = RunContext(load_recipe("quickstart", ["model.name=resnet56", "data.batch_size=512"]), tmp_path / "v")
    assert choose_threads(big)[0] is None  # 8x8 digits through ResNet-56, 512 a batch: torch's default
    assert load_recipe("quickstart", ["threads=2"]).fingerprint() == load_recipe("quickstart").fingerprint()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(ctx) == (None, "OMP_NUM_THREADS is set")


def test_a_closed_pipe_is_not_a_traceback(monkeypatch):
    """`prunelab recipes | head -1`: the reader goes away; prunelab stops without a traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write fails with EPIPE
    out = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(["recipes"]) == 1
    finally:
        monkeypatch.undo()
        try:
            out.close()
        except OSError:
            pass


def test_a_layer_pruned_past_99_percent_is_named(tmp_path, capsys):
    over = ["train.epochs=1", "prune.schedule.name=oneshot", "prune.retrain.epochs=0", "prune.sparsity=0.5",
            "prune.method={name: magnitude, allocation: {name: explicit, sparsities: {fc3.weight: 0.995}, "
            "default: 0.5}}"]
    s = Runner(load_recipe("quickstart", over), tmp_path / "r", progress=False, log=lambda m: None).run()
    assert s["nearly_empty"] == [{"name": "fc3.weight", "sparsity": pytest.approx(0.995)}]
    assert main(["show", str(tmp_path / "r")]) == 0
    assert "layers pruned past 99 % (the model is cut there)" in capsys.readouterr().out
