"""train.loggers: every epoch's metrics in TensorBoard, W&B (offline) and MLflow (file store) files under the
run folder, without changing which run a recipe is."""
import pytest

from prunelab.cli import main
from prunelab.experiment.schema import load_recipe

TINY = ["train.epochs=2", "prune.schedule.rounds=1", "prune.retrain.epochs=1"]


def test_loggers_are_not_part_of_a_runs_identity():
    plain = load_recipe("quickstart", TINY)
    logged = load_recipe("quickstart", TINY + ["train.loggers=[tensorboard]", "prune.retrain.loggers=[mlflow]"])
    assert plain.fingerprint() == logged.fingerprint() and plain.dense_fingerprint() == logged.dense_fingerprint()


def test_each_tracker_gets_every_epoch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", "quickstart", *TINY, "train.loggers=[tensorboard, wandb, mlflow]", "--runs-dir", str(tmp_path),
            "--no-progress"]
    assert main(args) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.name.startswith("quickstart")]
    acc = EventAccumulator(str(run / "logs" / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("dense/train_loss")
    assert len(loss) == 2 and loss[1].step == 2 * loss[0].step > 0  # two epochs, at the global step
    assert len(acc.Scalars("round_01/sparsity")) == 1 and acc.Scalars("round_01/sparsity")[0].value > 0.9
    assert list((run / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    metrics = list((run / "logs" / "mlruns").rglob("metrics/dense.train_loss"))
    assert len(metrics) == 1 and len(metrics[0].read_text().splitlines()) == 2
    assert wandb.run is None  # the run's W&B run was finished


def test_a_tracker_that_is_not_installed_is_one_sentence(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["run", "quickstart", *TINY, "train.loggers=[wandb]", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install wandb" in err and "Traceback" not in err
    assert main(["run", "quickstart", *TINY, "train.loggers=[neptune]", "--runs-dir", str(tmp_path)]) == 2
    assert "train.loggers" in capsys.readouterr().err
