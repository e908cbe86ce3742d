"""How much better could a learned exit do with a richer classifier? Per stage, the shipped
logistic model against gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier)
on the same features, and trees with every earlier exit's probability added; each set by a
single threshold to its most conservative setting reaching the speed-up on ``--split``
(labels unused), as in ``learned_exit.py``. Binary classification traces only.

    python benchmarks/learned_exit_ceiling.py --run runs/sst2-pabee --fit-split train_rest [--save]

Trees cannot live in a policy spec; this measures the head-room, it ships nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.evaluation import per_sample_quality
from adaptive_exit.policies.learned import stage_features
from adaptive_exit.runtime.traces import Trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import add_save_flag, print_table, results_path  # noqa: E402


def features(trace: Trace, history: bool) -> np.ndarray:
    """(N, L, F) the learned exit's features, plus (with ``history``) the positive-class
    probability of every exit so far (zeros for later ones)."""
    base = stage_features("logits", trace.outputs.double()).numpy()
    if not history:
        return base
    probs = trace.outputs.double().softmax(-1)[..., 1].numpy()
    upto = np.tril(np.ones((trace.num_stages, trace.num_stages)))  # row k: exits 0..k
    return np.concatenate([base, probs[:, None, :] * upto[None]], -1)


def exit_probabilities(make, fit_x, fit_q, x) -> np.ndarray:
    """(N, L) per stage the fitted probability that the exit is as good as the last one."""
    out = np.ones(x.shape[:2])
    for k in range(x.shape[1] - 1):
        out[:, k] = make().fit(fit_x[:, k], fit_q[:, k] >= fit_q[:, -1]).predict_proba(x[:, k])[:, 1]
    return out


def at_speedup(prob: np.ndarray, quality: np.ndarray, target: float) -> tuple[float, float]:
    """(speed-up, mean quality) at the highest threshold whose first-passing exits reach ``target``."""
    stages = prob.shape[1]
    for threshold in np.sort(np.unique(prob))[::-1]:
        exit_stage = np.argmax(prob >= threshold, axis=1)
        speedup = stages / (exit_stage + 1).mean()
        if speedup >= target * (1 - 1e-9):
            return float(speedup), float(quality[np.arange(len(exit_stage)), exit_stage].mean())
    return float("nan"), float("nan")


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--fit-split", required=True)
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    add_save_flag(parser)
    args = parser.parse_args()
    pipeline = Pipeline(load_recipe(Path(args.run) / "config.yaml")[0])
    metric = pipeline.recipe.eval.metrics[0]
    fit, test = pipeline.load_trace(args.fit_split), pipeline.load_trace(args.split)
    fit_q, test_q = per_sample_quality(fit, metric).numpy(), per_sample_quality(test, metric).numpy()
    models = {"logistic (shipped)": (lambda: LogisticRegression(max_iter=2000), False),
              "boosted trees": (lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05), False),
              "boosted trees + earlier exits": (lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05), True)}
    rows = []
    for name, (make, history) in models.items():
        prob = exit_probabilities(make, features(fit, history), fit_q, features(test, history))
        for target in args.speedups:
            speedup, quality = at_speedup(prob, test_q, target)
            rows.append({"classifier": name, "target": target, "speedup": speedup, metric: quality})
    print_table(["classifier", "target", "speed-up", metric],
                [[r["classifier"], f"{r['target']:g}", f"{r['speedup']:.2f}x", f"{r[metric]:.4f}"] for r in rows])
    out = results_path(f"learned_exit_ceiling_{Path(args.run).name}.json", args.save)
    out.write_text(json.dumps({"run": Path(args.run).name, "split": args.split, "fit_split": args.fit_split, "rows": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
