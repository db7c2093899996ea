"""The input and output boundaries: what a hostile or careless user hands prunelab ends in exit 2 and one line,
and nothing that existed before is changed (a user's folder, a file in the way, a link, a device-like file)."""
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.cli import main

FAST = ["train.epochs=1", "prune.schedule.rounds=1", "prune.retrain.epochs=1", "--no-progress"]


def _snapshot(*roots: Path) -> dict:
    """Every path under the roots: its kind, mode and bytes (links by their target), to compare before/after."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() or root.is_symlink() else []:
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir",)
            elif p.is_file():
                out[str(p)] = ("file", p.read_bytes())
            else:
                out[str(p)] = ("special", os.lstat(p).st_mode)
    return out


def _refused(argv, capsys, needle: str) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals (a flag's type) exit from inside the parser
        code = exc.code
    assert code == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab: error: ") and "Traceback" not in err[0], err
    assert needle in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["run", *FAST, "--runs-dir", str(runs)]) == 0
    return next(runs.glob("quickstart-*"))


@pytest.fixture
def user(tmp_path):
    """A user's things in the way: a folder with a file, a file, a link to a file, a named pipe."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file.bin").write_bytes(b"precious")
    (tmp_path / "target.txt").write_text("linked")
    (tmp_path / "link").symlink_to(tmp_path / "target.txt")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


@pytest.mark.parametrize("fmt, out, needle", [
    ("dense", "mine", "is a folder, not a file"),
    ("hf", "mine", "prunelab never replaces a user's folder"),
    ("hf", "file.bin", "is a file, where a folder is written"),
    ("sparse", "file.bin", "already exists; add --force"),
    ("dense", "link", "is a symbolic link"),
    ("hf", "link", "is a symbolic link"),
    ("dense", "fifo", "is a special file"),
    ("dense", "file.bin/x", "cannot use"),
])
def test_export_never_replaces_what_is_in_the_way(run, user, capsys, fmt, out, needle):
    before = _snapshot(user)
    _refused(["export", str(run), "--format", fmt, "--out", str(user / out)], capsys, needle)
    assert _snapshot(user) == before


def test_export_replaces_a_file_only_with_force_and_with_the_users_umask(run, user, capsys):
    target = user / "file.bin"
    old = os.umask(0o022)
    try:
        assert main(["export", str(run), "--format", "dense", "--out", str(target), "--force"]) == 0
    finally:
        os.umask(old)
    assert target.read_bytes() != b"precious" and (target.stat().st_mode & 0o777) == 0o644
    assert not [p for p in user.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_compare_out_refuses_a_file_and_a_users_folder_and_counts_a_run_once(run, user, capsys):
    before = _snapshot(user)
    _refused(["compare", str(run), "--out", str(user / "file.bin")], capsys, "is a file, where a folder")
    _refused(["compare", str(run), "--out", str(user / "mine")], capsys, "never replaces a user's folder")
    _refused(["compare", str(run), str(run)], capsys, "are the same run")
    assert _snapshot(user) == before
    assert main(["compare", str(run), "--out", str(user / "report")]) == 0
    _refused(["compare", str(run), "--out", str(user / "report")], capsys, "add --force to replace it")
    assert main(["compare", str(run), "--out", str(user / "report"), "--force"]) == 0


def test_a_hugging_face_folder_is_replaced_only_if_prunelab_wrote_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    from prunelab.models.hf import save_pretrained
    from prunelab.outputs import MARKER, OutputError

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16,
                                                                 n_positions=8))
    out = save_pretrained(model, tmp_path / "hf")
    assert (out / MARKER).is_file() and (out / "config.json").is_file()
    with pytest.raises(OutputError, match="add --force"):
        save_pretrained(model, out)
    old = os.umask(0o022)
    try:
        save_pretrained(model, out, force=True)  # ours and unchanged: replaced whole
    finally:
        os.umask(old)
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o644}  # the weights file too (not 0600)
    (out / "extra.txt").write_text("x")  # the user's file in it: the folder is no longer provably prunelab's
    with pytest.raises(OutputError, match=r"extra.txt \(not written by prunelab\)"):
        save_pretrained(model, out, force=True)
    assert (out / "extra.txt").read_text() == "x"
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "a").write_text("a")
    with pytest.raises(OutputError, match="never replaces a user's folder"):
        save_pretrained(model, tmp_path / "users", force=True)
    assert (tmp_path / "users" / "a").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "users"]  # no temporary folders left


def test_a_file_size_limit_is_one_sentence_and_leaves_no_partial_file(run, tmp_path, capsys):
    """EFBIG (a file-size limit) in safetensors' own writer and in prunelab's: one sentence naming the file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ, so writes fail with EFBIG
    try:
        for fmt in ("dense", "sparse"):
            line = _refused(["export", str(run), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")], capsys,
                            "File too large")
            assert str(tmp_path / f"m.{fmt}") in line and "file-size limit" in line
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_a_full_disk_is_one_sentence_and_leaves_nothing_behind(run, tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        (mnt / "keep.txt").write_text("old")
        _refused(["export", str(run), "--format", "dense", "--out", str(mnt / "m.safetensors")], capsys,
                 "No space left on device")
        _refused(["compare", str(run), "--out", str(mnt / "report")], capsys, "No space left on device")
        assert sorted(p.name for p in mnt.iterdir()) == ["keep.txt"]  # compare writes beside, then moves in
        assert not [p for p in mnt.rglob("*") if p.is_file() and p.stat().st_size == 0]  # no empty figure
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("forge", ["old marker", "manifest", "link", "edited"])
def test_a_forged_or_stale_marker_never_lets_force_empty_a_folder(run, user, capsys, forge):
    """Ownership is proven by the manifest's digests, not by a file anyone can write (or link)."""
    import json

    from prunelab.outputs import MARKER

    mine = user / "mine"
    if forge == "old marker":
        (mine / MARKER).write_text(json.dumps({"written_by": "prunelab", "holds": "x"}))
    elif forge == "manifest":
        (mine / MARKER).write_text(json.dumps({"written_by": "prunelab", "holds": "x", "files": {}}))
    elif forge == "link":
        (mine / MARKER).symlink_to(user / "target.txt")
    else:  # a real prunelab output the user then wrote into
        assert main(["compare", str(run), "--out", str(mine / "report")]) == 0
        mine = mine / "report"
        (mine / "rethinking.md").write_text("my edits")
    before = _snapshot(user)
    needle = "rethinking.md (changed since prunelab wrote it)" if forge == "edited" else "never replaces a user's"
    for fmt in ("hf", "compare"):
        argv = (["export", str(run), "--format", "hf"] if fmt == "hf" else ["compare", str(run)])
        _refused([*argv, "--out", str(mine), "--force"], capsys, needle if fmt == "compare" else "")
    assert _snapshot(user) == before


@pytest.mark.parametrize("where", ["summary.json", "stages/x.bin", "export/model.safetensors/inner"])
def test_an_output_inside_a_run_folder_is_refused(run, capsys, where):
    before = _snapshot(run)
    _refused(["export", str(run), "--format", "dense", "--out", str(run / where), "--force"], capsys,
             "which prunelab wrote (a run or an output folder)")
    assert _snapshot(run) == before


def test_an_interrupted_compare_leaves_nothing_and_a_hf_write_error_is_an_os_error(run, tmp_path, monkeypatch,
                                                                                  capsys):
    import prunelab.experiment.mask_report as mask_report

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mask_report, "mask_report", interrupted)
    assert main(["compare", str(run), "--out", str(tmp_path / "report")]) == 130
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(["compare", str(run), "--out", str(tmp_path / "report")]) == 0  # not refused afterwards

    transformers = pytest.importorskip("transformers")
    from prunelab.models.hf import save_pretrained

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16,
                                                                 n_positions=8))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as err:
            save_pretrained(model, tmp_path / "hf")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == 27 and "hf" in str(err.value.filename)  # EFBIG: the CLI says it in one sentence
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize("name", ["../../outside", "/abs/elsewhere", "two\nlines", "x" * 300, ".."])
def test_a_run_name_never_leaves_the_runs_folder(tmp_path, name):
    runs = tmp_path / "a" / "runs"
    assert main(["run", f"name={name!r}".replace("'", '"') if "\n" in name else f"name={name}",
                 "train.epochs=1", "--stop-after", "dense", "--no-progress", "--runs-dir", str(runs)]) == 0
    made = [p for p in tmp_path.rglob("*") if p.is_dir() and p.parent == runs]
    assert {p.name for p in made if p.name != "_dense"} and all(len(p.name) <= 91 and "\n" not in p.name
                                                               for p in made)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and sorted(p.name for p in (tmp_path / "a").iterdir()) \
        == ["runs"]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe\x00b\x00i\x00n", "is not UTF-8 text"),
    ("model: {name: lenet5}\ndescription: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    (b"[" * 5000 + b"]" * 5000, "nested more than"),
    (("data: " + "{a: " * 100 + "1" + "}" * 100).encode(), "nested more than"),
    (BOMB.encode(), "expands to more than"),
    (b"a: &a [*a]\n", "an alias that contains itself"),
    (b"seed: 1\nseed: 2\n", "key 'seed' is given twice (lines 1 and 2)"),
    (b"", "is empty"),
    (b"# nothing\n", "is empty"),
    (b"description: '" + b"x" * (2 << 20) + b"'\n", "a recipe is at most"),
])
def test_a_bad_recipe_file_is_one_sentence(tmp_path, capsys, content, needle):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    _refused(["run", str(path), "--runs-dir", str(tmp_path / "runs")], capsys, needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, needle", [
    (["seed=1000000000000000000000000000000"], "recipe key seed"),
    (["seed=-1"], "recipe key seed"),
    (["train.lr=1e308"], "recipe key train.lr"),
    (["prune.schedule.rounds=1000000000"], "recipe key prune.schedule.rounds"),
    (["train.epochs=10000000000"], "recipe key train.epochs"),
    (["description=" + "x" * 20000], "recipe key description"),
    (["model.kwargs={a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
      "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}"], "expands to more than"),
    (["prune.method={name: magnitude, name: random}"], "given twice"),
    (["prune.targets={include: 5}"], "targets include must be a name pattern"),
    (["model.name=torchvision:resnet18", "model.kwargs={num_classes: -1}"], "comes from the data set"),
    (["device=mps"], "device 'mps' cannot be used here"),
    (["prune.final_epochs=1000000000000"], "recipe key prune.final_epochs"),
    (["--threads", "0"], "out of range"),
    (["--threads", "100000"], "out of range"),
    (["--threads", "two"], "is not a whole number"),
])
def test_numbers_and_values_out_of_range_are_one_sentence(tmp_path, capsys, argv, needle):
    _refused(["run", *argv, "--runs-dir", str(tmp_path)], capsys, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, needle", [
    (["attack", "{run}", "--samples", "-5"], "out of range"),
    (["attack", "{run}", "--eps", "nan"], "radii between 0 and 1"),
    (["bench", "{run}", "--repeats", "0"], "out of range"),
    (["show", "{run}/summary.json"], "is a file, not a run folder"),
    (["show", "{run}/nope"], "does not exist"),
    (["curve", "quickstart", "--compressions", "1e9"], "at most 1,000,000"),
    (["curve", "quickstart", "--compressions", "inf"], "at most 1,000,000"),
    (["sweep", "quickstart", "--jobs", "0"], "out of range"),
])
def test_command_flags_out_of_range_are_one_sentence(run, tmp_path, capsys, argv, needle):
    before = _snapshot(run)
    _refused([a.replace("{run}", str(run)) for a in argv] + (["--runs-dir", str(tmp_path)] if argv[0] in
                                                              ("curve", "sweep") else []), capsys, needle)
    assert _snapshot(run) == before


@pytest.mark.subprocess
def test_import_and_help_do_not_import_torch():
    code = ("import sys, prunelab, prunelab.cli; prunelab.cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'torch_pruning', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = ("import sys, contextlib, io, prunelab.cli; f = io.StringIO(); r = contextlib.redirect_stdout(f); "
            "r.__enter__(); prunelab.cli.main(['recipes']); r.__exit__(None, None, None); "
            "print('quickstart' in f.getvalue(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True False"  # the list of recipes does not wait 2 s for torch
