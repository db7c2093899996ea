"""Random recipes and overrides through the command line: a valid run or exit 2 with one line, never a traceback."""
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from prunelab.cli import main  # noqa: E402

KEYS = ["train.lr", "train.epochs", "train.optimizer", "train.momentum", "train.lr_schedule", "train.milestones",
        "prune.sparsity", "prune.method", "prune.method.name", "prune.method.allocation", "prune.schedule",
        "prune.schedule.name", "prune.schedule.rounds", "prune.targets", "prune.calibration", "prune.retrain.lr",
        "prune.controls", "data.batch_size", "data.train_subset", "data.seq_len", "model.name", "model.kwargs",
        "seed", "device", "prune", "train", "data", "description"]
SNIPPETS = ["{name: magnitude}", "[1, 2]", "{", "null", ".inf", "-.nan", "wanda", "{name: sparsegpt, blocksize: -1}",
            "{name: pca, tau: 2}", "'", "{a: {b: [}", "yes", "{name: nm, n: 3, m: 2}", "{exclude: ['*']}", "~",
            "{name: drop_pruning, p_out: 1.5}", "[scratch_e, nope]", "hf:gpt2", "torchvision:nope", "cuda:7",
            "{name: iterative, rounds: 0}", "1e400", "0x10", "2026-11-24", "!!python/object:os.system ls"]

keys = st.one_of(st.sampled_from(KEYS), st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=14))
values = st.one_of(st.integers(-3, 10 ** 9).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(SNIPPETS), st.text(max_size=16).filter(lambda t: "\x00" not in t))
overrides = st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=3)
documents = st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=60),
                      st.dictionaries(st.sampled_from(["seed", "data", "model", "train", "prune", "x"]),
                                      st.one_of(st.integers(), st.sampled_from(SNIPPETS), st.lists(st.integers())),
                                      max_size=4).map(str))

FAST = ["train.epochs=1", "--stop-after", "dense", "--no-progress"]  # a valid recipe costs one tiny epoch


def _check(argv, capsys) -> None:
    with tempfile.TemporaryDirectory() as runs:
        code = main(argv + ["--runs-dir", runs])
    out = capsys.readouterr()
    assert code in (0, 2), (argv, code)
    if code == 2:
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prunelab: error: "), (argv, out.err[-300:])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides)
@example(["prune.method.name={name: magnitude}"])  # found by this test: a mapping where a part's name is meant
@example(["model.name=hf:gpt2"])  # found by this test: a language model on image data
def test_random_overrides_give_a_run_or_one_sentence(capsys, ov):
    _check(["run", "quickstart", *ov, *FAST], capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(documents)
def test_random_recipe_files_give_a_run_or_one_sentence(capsys, doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_text(doc, encoding="utf-8")
        _check(["run", str(path), *FAST], capsys)
