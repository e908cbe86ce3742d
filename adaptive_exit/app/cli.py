"""The ``adaptive-exit`` command.

    adaptive-exit run RECIPE [key.path=value ...]        train, evaluate, sweep (and calibrate)
    adaptive-exit train|evaluate|sweep RECIPE [overrides]
    adaptive-exit calibrate RECIPE --budget mean:0.5 [overrides]   (or --model RUN_DIR/model)
    adaptive-exit budget-sweep SWEEP.yaml                 calibrate several recipes to several budgets
    adaptive-exit <domain command> ...                   predict, enhance, ... (from installed domains)

Options (``-v``, ``-q``, ``--threads``) and ``key=value`` overrides may stand anywhere
after the command. Domains are imported only when one of their commands runs, so
``adaptive-exit --help`` answers without loading torch or transformers.
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")
EXAMPLE_RECIPE = "recipes/core/toy/demo.yaml"

# name: (one-line summary, description, examples)
CORE_COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    "run": ("train, evaluate, sweep and calibrate a recipe in one go",
            "Train the recipe's model, record every exit's output on the eval split, sweep the recipe's "
            "policies against static truncation and the oracle, time the default policy (compaction vs "
            "batch-sync vs full model) and, when calibrate.budget is set, calibrate to it. Everything "
            "lands in the recipe's run_dir.",
            [f"adaptive-exit run {EXAMPLE_RECIPE}", f"adaptive-exit run {EXAMPLE_RECIPE} train.max_steps=200 eval.policy=entropy:0.3"]),
    "train": ("train a recipe's model (resumes from its checkpoint)",
              "Train the recipe's model and save it to RUN_DIR/model. A run folder with a checkpoint resumes "
              "from it when its training settings match (train.resume=force continues anyway).",
              [f"adaptive-exit train {EXAMPLE_RECIPE} train.max_steps=500 --threads 1"]),
    "evaluate": ("record traces, sweep policies and time the default policy",
                 "Run the saved model once over the eval split recording every exit, then replay the recipe's "
                 "policy sweeps on that trace and time the default policy at eval.timing_batch_size.",
                 [f"adaptive-exit evaluate {EXAMPLE_RECIPE} eval.timing_batch_size=64"]),
    "sweep": ("replay policies on recorded traces (no model run)",
              "Replay policy families on the recorded trace of the eval split (milliseconds, no model run) "
              "and rewrite results.json, sweep.csv and plot.png.",
              [f"adaptive-exit sweep {EXAMPLE_RECIPE} \"eval.sweeps={{max_prob: [0.6, 0.8, 0.9]}}\""]),
    "calibrate": ("pick the best policy within a compute budget and make it the default",
                  "Replay the candidate policies on the calibration split, keep those within the budget and "
                  "pick the best quality; the choice becomes the model's default policy and enters its budget "
                  "table (budget_policies.json), which --budget at run time reads. Budgets: mean:F (mean "
                  "fraction of the full model), max:F (per-sample cap), stages:N, flops:2G, ms:15, p95:20ms, "
                  "rtf:0.3.",
                  [f"adaptive-exit calibrate {EXAMPLE_RECIPE} --budget mean:0.5",
                   "adaptive-exit calibrate --model runs/sst2-pabee/model --budget mean:0.5 --levels mean:0.3,mean:0.7",
                   "adaptive-exit calibrate --model runs/speech-voicebank/model --budget p95:20ms --remeasure"]),
    "export": ("export a saved model as per-stage ONNX graphs for onnxruntime",
               "Write one ONNX graph per stage (plus the begin graph and each exit head) with dynamic batch and "
               "length axes, and a manifest; the exit policy, compaction and budget table stay on the host, so "
               "predict, enhance and serve run the folder on onnxruntime with the same policies. --int8 quantizes "
               "the stage graphs (dynamic int8). The export is checked against the PyTorch model on a probe batch.",
               ["adaptive-exit export --model runs/sst2-pabee/model --output exported/sst2",
                "adaptive-exit export --model runs/sst2-pabee/model --output exported/sst2-int8 --int8"]),
    "serve": ("serve a model over HTTP with dynamic batching and a latency-keeping budget",
              "Serve a saved or exported model: POST /predict (text, JSON) or /enhance (speech, WAV in and out), "
              "GET /health and /metrics. Requests are batched (up to --max-batch, or what arrives within "
              "--max-wait-ms), exited rows leave each batch, and with --slo a controller moves the run-time "
              "budget along the model's calibrated budget table to keep that latency, back to full quality when "
              "load falls.",
              ["adaptive-exit serve --model runs/sst2-pabee/model --slo p95:50ms --port 8000",
               "curl -s localhost:8000/predict -H 'content-type: application/json' -d '{\"texts\": [\"a fine film\"]}'"]),
    "budget-sweep": ("calibrate several recipes to several budgets and compare with static truncation",
                     "For every recipe in the sweep file and every budget, calibrate on one half of the "
                     "evaluation split and measure on the other; static truncation is scored at the same cost. "
                     "Writes results.json, table.md and plot.png to the sweep's output_dir.",
                     ["adaptive-exit budget-sweep recipes/cross_domain/budget_sweep.yaml"]),
}


# --------------------------------------------------------------------------- parser

def common_options() -> argparse.ArgumentParser:
    """-v/-q/--threads, accepted before or after the command (SUPPRESS: a value given
    after the command is not reset by the subparser's default)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and full tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors (no progress messages)")
    common.add_argument("--threads", default=argparse.SUPPRESS, metavar="N|auto",
                        help="CPU threads for torch (default: auto = the idle cores; also runtime.threads in a "
                             "recipe or $ADAPTIVE_EXIT_THREADS)")
    return common


def add_command(sub, name: str, summary: str, description: str, examples: Sequence[str],
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """A subcommand whose --help shows a description and examples (domains use it too)."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=summary, description=description, epilog=epilog, parents=list(parents),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _recipe_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("recipe", nargs="?" if optional else None, help="a YAML recipe, e.g. " + EXAMPLE_RECIPE)
    parser.add_argument("overrides", nargs="*", default=[],
                        help="key.path=value settings over the recipe (values read as YAML), anywhere on the line")


def build_parser(domain_registers: dict[str, Callable] | None = None, domain_stubs: dict[str, str] | None = None
                 ) -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="adaptive-exit", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adaptive (early-exit) inference: a model runs stage by stage and each sample stops as soon "
                    "as an exit policy says its output is good enough.",
        epilog="examples:\n  adaptive-exit run recipes/core/toy/demo.yaml            # the core demo, under a minute\n"
               "  adaptive-exit COMMAND --help                            # a command's options and examples")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, description, examples) in CORE_COMMANDS.items():
        cmd = add_command(sub, name, summary, description, examples, [common])
        if name == "serve":
            cmd.add_argument("--model", required=True, help="a saved (RUN_DIR/model) or exported model folder")
            cmd.add_argument("--slo", default=None, help="latency target that moves the budget, e.g. p95:50ms or ms:30 "
                                                         "(default: none, the model's default policy always)")
            cmd.add_argument("--policy", default=None, help="the exit policy without --slo, e.g. full or entropy:0.3 "
                                                           "(default: the model's calibrated default policy)")
            cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
            cmd.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
            cmd.add_argument("--max-batch", type=int, default=32, help="largest batch (default: 32)")
            cmd.add_argument("--max-wait-ms", type=float, default=5.0,
                             help="how long the first request of a batch waits for others (default: 5 ms)")
            continue
        if name == "export":
            cmd.add_argument("--model", required=True, help="a saved model folder (RUN_DIR/model)")
            cmd.add_argument("--output", required=True, help="the folder to write (must not exist, or be empty)")
            cmd.add_argument("--format", default="onnx", choices=["onnx"], help="the export format (default: onnx)")
            cmd.add_argument("--int8", action="store_true", help="dynamic int8 quantization of the stage graphs")
            continue
        _recipe_arguments(cmd, optional=name == "calibrate")
        if name == "calibrate":
            cmd.add_argument("--model", help="a saved model folder (RUN_DIR/model); its run's config.yaml is the recipe")
            cmd.add_argument("--data", metavar="SPLIT", help="the split to calibrate on (default: the recipe's calibrate.split)")
            cmd.add_argument("--budget", help="the budget: mean:0.5, max:0.6, stages:3, flops:2G, ms:15, p95:20ms, rtf:0.3 "
                                              "(default: the recipe's calibrate.budget)")
            cmd.add_argument("--levels", default="", metavar="B1,B2", help="more budgets for the model's run-time budget "
                                                                         "table, comma-separated (e.g. mean:0.3,mean:0.7)")
            cmd.add_argument("--remeasure", action="store_true",
                             help="measure latency again instead of using the profile cached in the model folder")
    for name, register in (domain_registers or {}).items():
        register(sub, common)
    for name, summary in (domain_stubs or {}).items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


# --------------------------------------------------------------------------- domain commands, loaded lazily

def _command_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="adaptive_exit.commands")}


def domain_command_summaries() -> dict[str, str]:
    """One-line help of each domain command, read from its module's ``COMMAND_HELP``
    literal without importing the domain (so ``--help`` stays fast and light)."""
    import importlib.util

    out = {}
    for name, ep in _command_entry_points().items():
        module = ep.value.split(":")[0]
        summary = f"(from {module})"
        try:
            package, _, leaf = module.rpartition(".")
            spec = importlib.util.find_spec(package)  # imports only the core parent, not the domain package
            source = Path(spec.submodule_search_locations[0]) / f"{leaf}.py"
            for node in ast.parse(source.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMAND_HELP" for t in node.targets):
                    summary = ast.literal_eval(node.value).get(name, summary)
        except (ImportError, AttributeError, OSError, SyntaxError, ValueError, TypeError):
            pass
        out[name] = summary
    return out


def _find_command(argv: Sequence[str]) -> str | None:
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--threads":
            skip = True
            continue
        if not token.startswith("-"):
            return token
    return None


# --------------------------------------------------------------------------- running

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _find_command(argv)
    registers, stubs = {}, {}
    if command not in CORE_COMMANDS:
        eps = _command_entry_points()
        if command in eps:
            registers = {command: eps[command].load()}
        else:
            stubs = domain_command_summaries()
    parser = build_parser(registers, stubs)
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + [e for e in extra if OVERRIDE.match(e)]
        extra = [e for e in extra if not OVERRIDE.match(e)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    configure_logging(verbose, quiet)
    try:
        from adaptive_exit.runtime.threads import configure_threads

        explicit_threads = getattr(args, "threads", None)
        if explicit_threads is not None or args.command not in CORE_COMMANDS:
            configure_threads(explicit_threads)
        if args.command in CORE_COMMANDS:
            return _core(args, explicit_threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"adaptive-exit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, TimeoutError) as exc:
        if verbose:
            raise
        print(f"adaptive-exit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback with -v
        if verbose:
            raise
        print(f"adaptive-exit {args.command}: internal error ({type(exc).__name__}): {_one_line(exc)} "
              "(run again with -v for the traceback, and please report it)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Progress messages of this package on stderr (INFO), other libraries' warnings;
    ``-v``: everything at DEBUG with logger names; ``-q``: warnings and errors only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("adaptive_exit").setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    for noisy in ("urllib3", "filelock", "matplotlib", "PIL", "fsspec", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        from adaptive_exit.runtime.threads import PROGRESS_ENV

        os.environ[PROGRESS_ENV] = "0"


def _core(args: argparse.Namespace, explicit_threads: str | None) -> int:
    from adaptive_exit.app.config import load_recipe
    from adaptive_exit.runtime.threads import configure_threads

    if args.command == "serve":
        configure_threads(explicit_threads)
        from adaptive_exit.deploy.serving import serve

        serve(args.model, args.slo, args.host, args.port, args.max_batch, args.max_wait_ms, args.policy)
        return 0
    if args.command == "export":
        configure_threads(explicit_threads)
        from adaptive_exit.app.export_command import run_export

        print(run_export(Path(args.model), Path(args.output), args.int8))
        return 0
    if args.command == "budget-sweep":
        configure_threads(explicit_threads)
        from adaptive_exit.app.budget_sweep import format_budget_table, run_budget_sweep

        print(format_budget_table(run_budget_sweep(args.recipe, args.overrides)))
        return 0
    recipe_path, overrides = args.recipe, list(args.overrides)
    if args.command == "calibrate":
        recipe_path, overrides = _calibration_recipe(args)
    recipe, _ = load_recipe(recipe_path, overrides)
    configure_threads(explicit_threads if explicit_threads is not None else recipe.runtime.threads)

    from adaptive_exit.app.pipeline import Pipeline
    from adaptive_exit.app.summary import calibration_summary, run_summary

    pipeline = Pipeline(recipe)
    if getattr(args, "model", None):
        pipeline.model_dir = Path(args.model)
    if args.command == "train":
        pipeline.train()
        if pipeline.shard.is_main:
            print(f"model saved to {pipeline.model_dir}")
        return 0
    if args.command == "calibrate":
        result = pipeline.calibrate(args.budget, [b for b in args.levels.split(",") if b.strip()],
                                    remeasure=args.remeasure)
        if result is not None:
            print(calibration_summary(result, pipeline))
        return 0
    report = {"run": pipeline.run, "evaluate": pipeline.evaluate, "sweep": pipeline.sweep}[args.command]()
    if report is None:  # a non-main rank of a multi-process launch: the main process reports
        return 0
    print(run_summary(report, pipeline))
    return 0


def _calibration_recipe(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The recipe and overrides for ``calibrate``: given, or found next to ``--model``."""
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
    return args.recipe, overrides


if __name__ == "__main__":
    sys.exit(main())
