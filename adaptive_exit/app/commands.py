"""The core commands of ``adaptive-exit``: each one object that declares its options and runs.

A command is one subclass of :class:`Command` registered in :data:`CORE_COMMANDS`; the
CLI (``cli.py``) builds the parser from them and calls :meth:`Command.run`. Domains add
their own commands through the ``adaptive_exit.commands`` entry points.
"""
from __future__ import annotations

import argparse
import logging
import re
import socket
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

EXAMPLE_RECIPE = "toy-demo"
#: a command-line ``key.path=value`` override
OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")


def bounded(kind: type, low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` (int or float) in [low, high], else a one-line parse error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not (low <= value and (high is None or value <= high)) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} in "
                                             f"{low:g}..{'inf' if high is None else f'{high:g}'}, got {text}")
        return value
    return parse


class Command:
    name = ""
    summary = ""
    description = ""
    examples: tuple[str, ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def threads(self, args: argparse.Namespace, explicit: str | None) -> None:
        """Set the torch threads before running (recipe commands read the recipe's setting)."""
        from adaptive_exit.runtime.threads import configure_threads

        configure_threads(explicit)

    def run(self, args: argparse.Namespace, explicit_threads: str | None) -> int:
        raise NotImplementedError


def recipe_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("recipe", nargs="?" if optional else None,
                        help=f"a YAML recipe file or a shipped recipe's name (adaptive-exit recipes lists them), e.g. {EXAMPLE_RECIPE}")
    parser.add_argument("overrides", nargs="*", default=[],
                        help="key.path=value settings over the recipe (values read as YAML), anywhere on the line")


class RecipeCommand(Command):
    """run / train / evaluate / sweep: the pipeline's steps on a recipe."""

    def __init__(self, name: str, summary: str, description: str, examples: tuple[str, ...]):
        self.name, self.summary, self.description, self.examples = name, summary, description, examples

    def add_arguments(self, parser):
        recipe_arguments(parser)

    def recipe(self, args: argparse.Namespace):
        from adaptive_exit.app.config import load_recipe

        recipe, _ = load_recipe(args.recipe, list(args.overrides))
        return recipe

    def run(self, args, explicit_threads):
        from adaptive_exit.app.pipeline import Pipeline
        from adaptive_exit.app.summary import run_summary
        from adaptive_exit.runtime.threads import configure_threads

        recipe = self.recipe(args)
        configure_threads(explicit_threads if explicit_threads is not None else recipe.runtime.threads)
        pipeline = Pipeline(recipe)
        if self.name == "train":
            pipeline.train()
            if pipeline.shard.is_main:
                print(f"model saved to {pipeline.model_dir}")
            return 0
        report = getattr(pipeline, self.name)()
        if report is not None:  # None on a non-main rank of a multi-process launch: the main process reports
            print(run_summary(report, pipeline))
        return 0


class CalibrateCommand(RecipeCommand):
    def __init__(self):
        super().__init__(
            "calibrate", "pick the best policy within a compute budget and make it the default",
            "Replay the candidate policies on the calibration split, keep those within the budget and pick the best "
            "quality; the choice becomes the model's default policy and enters its budget table "
            "(budget_policies.json), which --budget at run time reads. Budgets: mean:F (mean fraction of the full "
            "model), max:F (per-sample cap), stages:N, flops:2G, ms:15, p95:20ms, rtf:0.3.",
            (f"adaptive-exit calibrate {EXAMPLE_RECIPE} --budget mean:0.5",
             "adaptive-exit calibrate --model runs/sst2-pabee/model --budget mean:0.5 --levels mean:0.3,mean:0.7",
             "adaptive-exit calibrate --model runs/speech-voicebank/model --budget p95:20ms --remeasure",
             "adaptive-exit calibrate --model runs/sst2-pabee/model --max-drop 1% --confidence 0.9 --learn-from train_rest"))

    def add_arguments(self, parser):
        recipe_arguments(parser, optional=True)
        parser.add_argument("--model", help="a saved model folder (RUN_DIR/model); its run's config.yaml is the recipe")
        parser.add_argument("--data", metavar="SPLIT", help="the split to calibrate on (default: the recipe's calibrate.split)")
        parser.add_argument("--budget", help="the budget: mean:0.5, max:0.6, stages:3, flops:2G, ms:15, p95:20ms, rtf:0.3 "
                                             "(default: the recipe's calibrate.budget)")
        parser.add_argument("--levels", default="", metavar="B1,B2", help="more budgets for the model's run-time budget "
                                                                        "table, comma-separated (e.g. mean:0.3,mean:0.7)")
        parser.add_argument("--remeasure", action="store_true",
                            help="measure latency again instead of using the profile cached in the model folder")
        parser.add_argument("--max-drop", metavar="D", help="instead of a cost budget: the cheapest policy whose quality "
                                                            "drop against the full model is at most D (metric units; "
                                                            "1%% = 0.01 accuracy), certified (the budget drop:D)")
        parser.add_argument("--confidence", metavar="C", help="the probability the --max-drop guarantee holds with "
                                                              "(default: the recipe's calibrate.confidence, 0.9)")
        parser.add_argument("--learn-from", metavar="SPLIT", help="fit a learned exit on this split's trace (kept out "
                                                                  "of evaluation, e.g. train_rest) and add it to the candidates")

    def recipe(self, args):
        from adaptive_exit.app.config import load_recipe

        recipe, _ = load_recipe(*self._recipe_and_overrides(args))
        return recipe

    def run(self, args, explicit_threads):
        from adaptive_exit.app.pipeline import Pipeline
        from adaptive_exit.app.summary import calibration_summary
        from adaptive_exit.runtime.threads import configure_threads

        recipe = self.recipe(args)
        configure_threads(explicit_threads if explicit_threads is not None else recipe.runtime.threads)
        pipeline = Pipeline(recipe)
        if args.model:
            pipeline.model_dir = Path(args.model)
        if args.max_drop is not None and args.budget:
            raise ValueError("--max-drop D is the budget drop:D; give it or --budget, not both")
        budget = f"drop:{args.max_drop}" if args.max_drop is not None else args.budget
        result = pipeline.calibrate(budget, [b for b in args.levels.split(",") if b.strip()], remeasure=args.remeasure)
        if result is not None:
            print(calibration_summary(result, pipeline))
        return 0

    @staticmethod
    def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
        """The recipe and overrides: given, or found next to ``--model``."""
        overrides = list(args.overrides)
        if args.recipe and OVERRIDE.match(args.recipe):  # `calibrate --model M key=value`: no recipe, an override
            overrides.insert(0, args.recipe)
            args.recipe = None
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
        if getattr(args, "confidence", None) is not None:
            overrides.append(f"calibrate.confidence={args.confidence}")
        if getattr(args, "learn_from", None):
            overrides.append(f"calibrate.learn_from={args.learn_from}")
        return args.recipe, overrides


class ExportCommand(Command):
    name = "export"
    summary = "export a saved model as per-stage ONNX graphs for onnxruntime"
    description = ("Write one ONNX graph per stage (plus the begin graph and each exit head) with dynamic batch and "
                   "length axes, and a manifest; the exit policy, compaction and budget table stay on the host, so "
                   "predict, enhance and serve run the folder on onnxruntime with the same policies. --int8 quantizes "
                   "the stage graphs (dynamic int8). The export is checked against the PyTorch model on a probe batch.")
    examples = ("adaptive-exit export --model runs/sst2-pabee/model --output exported/sst2",
                "adaptive-exit export --model runs/sst2-pabee/model --output exported/sst2-int8 --int8")

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, help="a saved model folder (RUN_DIR/model)")
        parser.add_argument("--output", required=True, help="the folder to write (must not exist, or be empty)")
        parser.add_argument("--format", default="onnx", choices=["onnx"], help="the export format (default: onnx)")
        parser.add_argument("--int8", action="store_true", help="dynamic int8 quantization of the stage graphs")

    def run(self, args, explicit_threads):
        from adaptive_exit.app.export_command import run_export

        print(run_export(Path(args.model), Path(args.output), args.int8))
        return 0


class ServeCommand(Command):
    name = "serve"
    summary = "serve a model over HTTP with dynamic batching and a latency-keeping budget"
    description = ("Serve a saved or exported model: POST /predict (text, JSON) or /enhance (speech, WAV in and out), "
                   "GET /health and /metrics. Requests are batched (up to --max-batch, or what arrives within "
                   "--max-wait-ms), exited rows leave each batch, and with --slo a controller moves the run-time "
                   "budget along the model's calibrated budget table to keep that latency, back to full quality when "
                   "load falls.")
    examples = ("adaptive-exit serve --model runs/sst2-pabee/model --slo p95:50ms --port 8000",
                "curl -s localhost:8000/predict -H 'content-type: application/json' -d '{\"texts\": [\"a fine film\"]}'")

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, help="a saved (RUN_DIR/model) or exported model folder")
        parser.add_argument("--slo", default=None, help="latency target that moves the budget, e.g. p95:50ms or ms:30 "
                                                        "(default: none, the model's default policy always)")
        parser.add_argument("--policy", default=None, help="the exit policy without --slo, e.g. full or entropy:0.3 "
                                                           "(default: the model's calibrated default policy)")
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
        parser.add_argument("--port", type=bounded(int, 1, 65535), default=8000, help="port, 1..65535 (default: 8000)")
        parser.add_argument("--max-batch", type=bounded(int, 1, 4096), default=32, help="largest batch, 1..4096 (default: 32)")
        parser.add_argument("--max-wait-ms", type=bounded(float, 0.0), default=5.0,
                            help="how long the first request of a batch waits for others, >= 0 (default: 5 ms)")

    def run(self, args, explicit_threads):
        import uvicorn

        from adaptive_exit.app.domain import load_any_model
        from adaptive_exit.budgets import BudgetTable
        from adaptive_exit.deploy.serving import BatchingServer, budget_levels, create_app
        from adaptive_exit.policies import build_policy

        if args.policy and args.slo:
            raise ValueError("give --slo (the controller picks the policy from the budget table) or --policy, not both")
        model, policy, domain = load_any_model(args.model)
        if args.policy:
            policy = build_policy(args.policy)
        adapter = domain.serve_adapter(model)
        levels = budget_levels(BudgetTable.load(args.model), policy) if args.slo else None
        server = BatchingServer(model, adapter, policy, levels, args.slo, args.max_batch, args.max_wait_ms)
        if levels:
            logger.info("budget levels: %s", ", ".join(f"{lv.name} ({lv.policy.spec()})" for lv in levels))
        check_bindable(args.host, args.port)
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning")
        return 0


def check_bindable(host: str, port: int) -> None:
    """A clear one-line error for an address that cannot be served (in use, not local)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class BudgetSweepCommand(Command):
    name = "budget-sweep"
    summary = "calibrate several recipes to several budgets and compare with static truncation"
    description = ("For every recipe in the sweep file and every budget, calibrate on one half of the evaluation "
                   "split and measure on the other; static truncation is scored at the same cost. Writes "
                   "results.json, table.md and plot.png to the sweep's output_dir.")
    examples = ("adaptive-exit budget-sweep recipes/cross_domain/budget_sweep.yaml",)

    def add_arguments(self, parser):
        recipe_arguments(parser)

    def run(self, args, explicit_threads):
        from adaptive_exit.app.budget_sweep import format_budget_table, run_budget_sweep

        print(format_budget_table(run_budget_sweep(args.recipe, args.overrides)))
        return 0


class RecipesCommand(Command):
    name = "recipes"
    summary = "list the shipped recipes, show one, or copy one out to edit"
    description = ("The recipes that ship with adaptive-exit, by name (any command that takes a recipe takes a name "
                   "too). Without arguments: their names, domains and what each does. 'show NAME' prints one; "
                   "'copy NAME [DEST]' writes it to DEST (default ./NAME.yaml) to edit, never over an existing file.")
    examples = ("adaptive-exit recipes", "adaptive-exit recipes show toy-demo",
                "adaptive-exit recipes copy sst2-pabee my-sst2.yaml")

    def add_arguments(self, parser):
        parser.add_argument("action", nargs="?", choices=["list", "show", "copy"], default="list",
                            help="list (default), show NAME, or copy NAME [DEST]")
        parser.add_argument("name", nargs="?", help="a recipe name (see the list)")
        parser.add_argument("destination", nargs="?", help="copy: the file or folder to write (default ./NAME.yaml)")

    def threads(self, args, explicit):
        pass

    def run(self, args, explicit_threads):
        from adaptive_exit.app.recipes import copy_recipe, describe, recipes_root, resolve_recipe, shipped_recipes

        if args.action == "list":
            recipes = shipped_recipes()
            width = max(map(len, recipes))
            for name, path in recipes.items():
                domain = path.relative_to(recipes_root()).parts[0] if len(path.relative_to(recipes_root()).parts) > 2 else "several"
                print(f"{name:<{width}}  {domain:<8}  {describe(path)}")
            return 0
        if not args.name:
            raise ValueError(f"recipes {args.action} needs a recipe name (adaptive-exit recipes lists them)")
        if args.action == "show":
            print(resolve_recipe(args.name).read_text(encoding="utf-8"), end="")
            return 0
        print(f"copied {args.name} to {copy_recipe(args.name, args.destination)}")
        return 0


def _core_commands() -> dict[str, Command]:
    commands: list[Command] = [
        RecipeCommand("run", "train, evaluate, sweep and calibrate a recipe in one go",
                      "Train the recipe's model, record every exit's output on the eval split, sweep the recipe's "
                      "policies against static truncation and the oracle, time the default policy (compaction vs "
                      "batch-sync vs full model) and, when calibrate.budget is set, calibrate to it. Everything "
                      "lands in the recipe's run_dir.",
                      (f"adaptive-exit run {EXAMPLE_RECIPE}",
                       f"adaptive-exit run {EXAMPLE_RECIPE} train.max_steps=200 eval.policy=entropy:0.3")),
        RecipeCommand("train", "train a recipe's model (resumes from its checkpoint)",
                      "Train the recipe's model and save it to RUN_DIR/model. A run folder with a checkpoint resumes "
                      "from it when its training settings match (train.resume=force continues anyway).",
                      (f"adaptive-exit train {EXAMPLE_RECIPE} train.max_steps=500 --threads 1",)),
        RecipeCommand("evaluate", "record traces, sweep policies and time the default policy",
                      "Run the saved model once over the eval split recording every exit, then replay the recipe's "
                      "policy sweeps on that trace and time the default policy at eval.timing_batch_size.",
                      (f"adaptive-exit evaluate {EXAMPLE_RECIPE} eval.timing_batch_size=64",)),
        RecipeCommand("sweep", "replay policies on recorded traces (no model run)",
                      "Replay policy families on the recorded trace of the eval split (milliseconds, no model run) "
                      "and rewrite results.json, sweep.csv and plot.png.",
                      (f"adaptive-exit sweep {EXAMPLE_RECIPE} \"eval.sweeps={{max_prob: [0.6, 0.8, 0.9]}}\"",)),
        CalibrateCommand(), ExportCommand(), ServeCommand(), BudgetSweepCommand(), RecipesCommand(),
    ]
    return {c.name: c for c in commands}


CORE_COMMANDS: dict[str, Command] = _core_commands()
