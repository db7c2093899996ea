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


# -- the input and output boundaries: bytes, encodings, nesting, aliases, huge numbers, paths, output targets --

def _nested(depth: int, mapping: bool) -> str:
    return ("{a: " * depth + "1" + "}" * depth) if mapping else ("[" * depth + "]" * depth)


def _aliases(width: int, levels: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


raw_documents = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=80).map(lambda t: t.encode("utf-16")),
    st.text(max_size=80).map(lambda t: t.encode("latin-1", "replace")),
    st.tuples(st.integers(1, 3000), st.booleans()).map(lambda dm: _nested(*dm).encode()),
    st.tuples(st.integers(1, 12), st.integers(1, 9)).map(lambda wl: _aliases(*wl).encode()),
    st.lists(st.sampled_from(["seed: 1", "seed: 2", "train: {epochs: 1}", "name: x", "model: {name: lenet5}"]),
             min_size=1, max_size=4).map(lambda ls: "\n".join(ls).encode()),
)
huge = st.tuples(st.sampled_from(KEYS[:20] + ["seed", "threads", "data.seq_len", "prune.calibration.samples"]),
                 st.one_of(st.integers(-10 ** 40, 10 ** 40).map(str), st.floats(1e30, 1e308).map(repr))
                 ).map(lambda kv: f"{kv[0]}={kv[1]}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw_documents)
def test_random_recipe_bytes_give_a_run_or_one_sentence(capsys, doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_bytes(doc)
        _check(["run", str(path), *FAST], capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(huge, min_size=1, max_size=2))
def test_huge_numbers_give_a_run_or_one_sentence(capsys, ov):
    _check(["run", "quickstart", *ov, *FAST], capsys)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["run", "train.epochs=1", "prune.schedule.rounds=1", "prune.retrain.epochs=1", "--no-progress",
                 "--runs-dir", str(runs)]) == 0
    return next(runs.glob("quickstart-*"))


names = st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=40)
in_the_way = st.sampled_from(["nothing", "file", "folder", "empty folder", "link", "dangling link", "fifo",
                              "under a file"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names, in_the_way, st.sampled_from(["dense", "sparse", "hf"]), st.booleans())
def test_random_output_targets_never_lose_a_users_file(capsys, finished_run, name, thing, fmt, force):
    import os

    with tempfile.TemporaryDirectory() as d:
        box = Path(d)
        (box / "keep.txt").write_text("mine")
        target = box / name
        try:
            if thing == "file":
                target.write_bytes(b"user bytes")
            elif thing in ("folder", "empty folder"):
                target.mkdir()
                if thing == "folder":
                    (target / "inside.txt").write_text("mine too")
            elif thing == "link":
                target.symlink_to(box / "keep.txt")
            elif thing == "dangling link":
                target.symlink_to(box / "gone")
            elif thing == "fifo":
                os.mkfifo(target)
            elif thing == "under a file":
                target = box / "keep.txt" / name
        except OSError:  # a name the file system refuses (too long): the case is out of reach
            return
        before = _things(box)
        argv = ["export", str(finished_run), "--format", fmt, "--out", str(target)] + (["--force"] if force else [])
        code = main(argv)
        out = capsys.readouterr()
        assert code in (0, 2), (argv, code)
        if code == 2:
            lines = out.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("prunelab: error: "), (argv, out.err[-300:])
        else:  # written: where nothing was, over a regular file when forced, or into an empty folder (hf)
            assert thing == "nothing" or (thing == "file" and force and fmt != "hf") or \
                (thing == "empty folder" and fmt == "hf"), (argv, thing)
        after = _things(box)
        for p, v in before.items():  # every user's thing as it was, but the target a successful export replaced
            assert p == target and code == 0 or after.get(p) == v, (argv, thing, p)
        assert not [p for p in box.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def _things(box: Path) -> dict:
    """Every path under ``box`` with its bytes (files) or its kind (anything else, links not followed)."""
    import os

    return {p: p.read_bytes() if p.is_file() and not p.is_symlink() else os.lstat(p).st_mode for p in box.rglob("*")}
