"""Run by tests/core/test_distributed.py under torchrun / accelerate launch (2 CPU processes)."""
import sys
from pathlib import Path

import torch

from adaptive_exit.app.toy import DOMAIN, ToyDataConfig, ToyModelConfig, ToyStagedModel, collate_toy, make_toy_samples
from adaptive_exit.training import TrainConfig, Trainer


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ToyStagedModel(ToyModelConfig(hidden=32))
    data = make_toy_samples(ToyDataConfig(), 512, 1)
    cfg = TrainConfig(max_steps=40, batch_size=32, lr=3e-3, progress=False, save_every=20, log_every=10)
    trainer = Trainer(model, data, collate_toy, DOMAIN.objective(cfg), cfg, Path(out_dir) / "run")
    model = trainer.train()
    from accelerate import PartialState

    state = PartialState()
    rank, world = state.process_index, state.num_processes
    torch.save({"state": model.state_dict(), "history": trainer.history, "world": world}, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
