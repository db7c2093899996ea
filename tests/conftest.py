
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    torch.manual_seed(0)
    yield


