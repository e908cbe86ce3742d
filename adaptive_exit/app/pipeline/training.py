"""The training step: multi-exit training, validation on a split, keeping the best model."""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable

import torch

from adaptive_exit import io
from adaptive_exit.app.config import save_resolved
from adaptive_exit.evaluation import metric_for, score
from adaptive_exit.runtime.traces import record_trace
from adaptive_exit.training import Trainer, set_seed

from .context import BEST_FILE, RunContext

logger = logging.getLogger(__name__)


class TrainStep:
    def __init__(self, run: RunContext):
        self.run = run

    def __call__(self):
        run, recipe, domain = self.run, self.run.recipe, self.run.domain
        save_resolved(recipe, run.run_dir)
        set_seed(recipe.seed)
        train_data = run.samples("train")  # missing data is reported before a model is loaded
        model = domain.build_model(run.model_cfg, run.data_cfg)
        collate = lambda samples: domain.collate(model, samples)  # noqa: E731
        lengths = [domain.sample_length(s) or 0 for s in train_data] if recipe.train.group_by_length else None
        trainer = Trainer(model, train_data, collate, domain.objective(recipe.train, model), recipe.train, run.run_dir,
                          eval_fn=self.validation(model), lengths=lengths)
        fresh = not (recipe.train.resume and trainer.checkpoint_path.exists())
        if fresh and run.shard.is_main:  # a best score from an earlier run in this folder must not block saving
            (run.run_dir / BEST_FILE).unlink(missing_ok=True)
        run.shard.barrier()
        model = trainer.train()
        saved = False
        if recipe.train.keep_best and (run.run_dir / BEST_FILE).exists():
            run.shard.barrier()
            model, _ = run.load_model()
            logger.info("kept the best validated model: %s", (run.run_dir / BEST_FILE).read_text().strip())
            saved = True
        elif recipe.train.keep_best:
            logger.warning("train.keep_best: no validation score was a number; saving the last model")
        changed = domain.post_train(model, train_data, collate, run.model_cfg, run.run_dir)
        if (changed or not saved) and run.shard.is_main:
            domain.save_model(model, run.model_dir, run.policy)
            logger.info("model saved to %s", run.model_dir)
        run.shard.barrier()
        return model

    def validation(self, model) -> Callable[[Any], dict[str, float]] | None:
        """With ``train.eval_every``: score every exit on ``train.eval_split`` under the
        eval metrics; with ``train.keep_best``, save the model whenever its last exit beats
        the best score so far (kept in best.json, so a resumed run keeps comparing)."""
        run, cfg = self.run, self.run.recipe.train
        if not cfg.eval_every:
            return None
        metrics = list(run.recipe.eval.metrics)
        if cfg.keep_best and cfg.keep_best not in metrics:
            raise ValueError(f"train.keep_best={cfg.keep_best!r} must be one of eval.metrics {metrics}")
        batches = run.batches(model, cfg.eval_split, run.recipe.eval.batch_size)
        best_path = run.run_dir / BEST_FILE

        def validate(raw) -> dict[str, float]:
            trace = record_trace(raw, batches, targets=run.domain.targets, quality=run.domain.quality,
                                 pad_value=run.domain.trace_pad_value(raw), target_pad_value=run.domain.target_pad_value(),
                                 progress=False, shard=run.shard)
            values = {}
            for k in range(trace.num_stages):
                stage = torch.full((trace.num_samples,), k, dtype=torch.long)
                values.update({f"{cfg.eval_split}_{m}_exit_{k + 1}": score(trace, stage, m) for m in metrics})
            if cfg.keep_best:
                value = values[f"{cfg.eval_split}_{cfg.keep_best}_exit_{trace.num_stages}"]
                best = io.read_json(best_path)["value"] if best_path.exists() else math.nan
                if metric_for(trace, cfg.keep_best).better(value, best):
                    if run.shard.is_main:
                        run.domain.save_model(raw, run.model_dir, run.policy)
                        io.write_text(best_path, json.dumps({"metric": cfg.keep_best, "split": cfg.eval_split, "value": value}))
                    run.shard.barrier()
            return values

        return validate
