"""The ``adaptive-exit`` command.

    adaptive-exit run RECIPE [key.path=value ...]        train, evaluate, sweep (and calibrate)
    adaptive-exit train|evaluate|sweep RECIPE [overrides]
    adaptive-exit calibrate RECIPE [overrides] --budget mean:0.5   (or --model RUN_DIR/model)
    adaptive-exit budget-sweep SWEEP.yaml                 calibrate several recipes to several budgets
    adaptive-exit <domain command> ...                   e.g. predict, enhance (from installed domains)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .config import ConfigError, load_recipe

CORE_COMMANDS = ("run", "train", "evaluate", "sweep", "calibrate", "budget-sweep")


def _recipe_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("recipe", help="path to a YAML recipe")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides (values parsed as YAML)")
    return parser


def build_parser(extra: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptive-exit", description="Adaptive (early-exit) inference: recipes, sweeps, calibration.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _recipe_parser(sub, "run", "train, record traces, sweep policies, time the default policy (and calibrate if a budget is set)")
    _recipe_parser(sub, "train", "train the recipe's model")
    _recipe_parser(sub, "evaluate", "record traces on the eval split, sweep, and time the default policy")
    _recipe_parser(sub, "sweep", "sweep policies on recorded traces (no model run)")
    cal = sub.add_parser("calibrate", help="choose the best policy within a compute budget and make it the model's default")
    cal.add_argument("recipe", nargs="?", help="path to a YAML recipe (or give --model)")
    cal.add_argument("overrides", nargs="*", help="key.path=value overrides (values parsed as YAML)")
    cal.add_argument("--model", help="a saved model folder (RUN_DIR/model); its run's config.yaml is the recipe")
    cal.add_argument("--data", help="the split to calibrate on (default: calibrate.split of the recipe)")
    cal.add_argument("--budget", help="mean:0.5 (mean fraction of the full model), stages:3, max:0.6 (hard cap), "
                     "flops:2G, ms:15, p95:20ms, rtf:0.3")
    cal.add_argument("--levels", default="", help="more budgets for the model's run-time budget table, comma-separated "
                     "(e.g. mean:0.3,mean:0.7)")
    bs = sub.add_parser("budget-sweep", help="calibrate several recipes' models to a list of budgets; compare with static truncation")
    bs.add_argument("recipe", help="a budget-sweep file, e.g. recipes/cross_domain/budget_sweep.yaml")
    bs.add_argument("overrides", nargs="*", help="key.path=value overrides")
    for name, loader in (extra or {}).items():
        loader()(sub)
    return parser


def _core(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline, summary_table

    if args.command == "budget-sweep":
        from .budget_sweep import format_budget_table, run_budget_sweep

        print(format_budget_table(run_budget_sweep(args.recipe, args.overrides)))
        return 0
    recipe_path, overrides = args.recipe, list(args.overrides)
    if args.command == "calibrate":
        recipe_path, overrides = _calibration_recipe(args)
    recipe, _ = load_recipe(recipe_path, overrides)
    pipeline = Pipeline(recipe)
    if getattr(args, "model", None):
        pipeline.model_dir = Path(args.model)
    if args.command == "train":
        pipeline.train()
        if pipeline.shard.is_main:
            print(f"model saved to {pipeline.model_dir}")
        return 0
    if args.command == "calibrate":
        result = pipeline.calibrate(args.budget, [b for b in args.levels.split(",") if b.strip()])
        if result is not None:
            print(json.dumps(result, indent=2))
        return 0
    report = {"run": pipeline.run, "evaluate": pipeline.evaluate, "sweep": pipeline.sweep}[args.command]()
    if report is None:  # a non-main rank of a multi-process launch: the main process reports
        return 0
    print(summary_table(report))
    if "timing" in report:
        print(json.dumps(report["timing"], indent=2))
    print(f"results written to {pipeline.run_dir}")
    return 0


def _calibration_recipe(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The recipe and overrides for ``calibrate``: given, or found next to ``--model``."""
    overrides = list(args.overrides)
    if args.model:
        run_dir = Path(args.model).resolve().parent
        if not (Path(args.model) / "config.json").is_file():
            raise FileNotFoundError(f"--model {args.model}: no saved model there (config.json missing)")
        if args.recipe is None:
            args.recipe = str(run_dir / "config.yaml")
            if not Path(args.recipe).is_file():
                raise FileNotFoundError(f"--model {args.model}: the run's recipe {args.recipe} is missing; pass the recipe as well")
        overrides.append(f"run_dir={run_dir}")
    if args.recipe is None:
        raise ValueError("calibrate needs a recipe or --model RUN_DIR/model")
    if args.data:
        overrides.append(f"calibrate.split={args.data}")
    return args.recipe, overrides


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = {}
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in CORE_COMMANDS:
        from .domain import domain_commands

        commands = domain_commands()
        extra = {command: commands[command]} if command in commands else commands
    parser = build_parser(extra)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in CORE_COMMANDS:
            return _core(args)
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"adaptive-exit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
