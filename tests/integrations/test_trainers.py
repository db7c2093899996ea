"""Pruning inside Hugging Face's Trainer and Lightning: pruned weights and their Adam moments exactly zero after
training, the schedule's events happen in the trainer's steps, masks travel with the trainers' checkpoints."""
import pytest
import torch
from torch import nn

from prunelab import Pruner

CUBIC = {"name": "cubic", "sparsity": 0.75, "start": 0, "end": 4, "frequency": 2}  # events at steps 0, 2, 4


def _zeros_hold(pruner, optimizer) -> None:
    for name, m in pruner.masks.items():
        p = pruner.params[name]
        assert not p.detach()[~m].any(), name
        for v in optimizer.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert not v[~m].any(), name


def test_hugging_face_trainer_prunes_on_its_schedule_and_checkpoints_the_masks(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from prunelab.integrations.hf_trainer import MASKS, PruningCallback

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=32))
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (12, 16),
                                                                        generator=torch.Generator().manual_seed(1))]
    pruner = Pruner(model, "magnitude", schedule=CUBIC)
    callback = PruningCallback(pruner)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=2,
                                          learning_rate=1e-3, logging_steps=1, save_steps=5, report_to=[],
                                          use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    assert pruner.step_count == 5 and pruner.events == 3
    assert pruner.masks.sparsity() == pytest.approx(0.75, abs=1e-3)
    _zeros_hold(pruner, trainer.optimizer.optimizer)
    logged = [h for h in trainer.state.log_history if "sparsity" in h]
    assert logged and logged[-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert (tmp_path / "checkpoint-5" / MASKS).is_file()
    fresh = Pruner(model, "magnitude", schedule=CUBIC)
    PruningCallback(fresh).resume(tmp_path / "checkpoint-5")
    assert fresh.step_count == 5 and all(torch.equal(fresh.masks[n], pruner.masks[n]) for n in pruner.masks)


def test_lightning_prunes_on_optimizer_steps_with_accumulation_and_checkpoints_the_masks(tmp_path):
    lightning = pytest.importorskip("lightning")
    from prunelab.integrations.lightning import PruningCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

        def training_step(self, batch, i):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    module = Module()
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 8, generator=g),
                                                                       torch.randint(0, 4, (40,), generator=g)),
                                         batch_size=4)
    pruner = Pruner(module, "magnitude", schedule=CUBIC)
    callback = PruningCallback(pruner)
    trainer = lightning.Trainer(max_steps=5, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                                callbacks=[callback],
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(tmp_path))
    trainer.fit(module, loader)
    assert trainer.global_step == 5 and pruner.step_count == 5 and pruner.events == 3  # 10 batches, 5 steps
    assert pruner.masks.sparsity() == pytest.approx(0.75, abs=1e-3)
    _zeros_hold(pruner, trainer.optimizers[0])
    saved = callback.state_dict()
    other = PruningCallback(Pruner(module, "magnitude", schedule=CUBIC))
    other.load_state_dict(saved)
    assert other.pruner.step_count == 5 and all(torch.equal(other.pruner.masks[n], pruner.masks[n])
                                                for n in pruner.masks)
