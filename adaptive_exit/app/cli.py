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
import difflib
import re
import ast
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

from adaptive_exit.app.commands import CORE_COMMANDS, OVERRIDE


# --------------------------------------------------------------------------- parser

class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line on stderr (exit 2), pointing at ``--help`` instead of
    printing the whole usage block."""

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"unknown {'command' if 'COMMAND' in message else 'choice'} {choice.group(1)!r}{hint} (known: {', '.join(options)})"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def common_options() -> argparse.ArgumentParser:
    """-v/-q/--threads, accepted before or after the command (SUPPRESS: a value given
    after the command is not reset by the subparser's default)."""
    common = OneLineParser(add_help=False)
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


def build_parser(domain_registers: dict[str, Callable] | None = None, domain_stubs: dict[str, str] | None = None
                 ) -> argparse.ArgumentParser:
    common = common_options()
    parser = OneLineParser(
        prog="adaptive-exit", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adaptive (early-exit) inference: a model runs stage by stage and each sample stops as soon "
                    "as an exit policy says its output is good enough.",
        epilog="examples:\n  adaptive-exit run recipes/core/toy/demo.yaml            # the core demo, under a minute\n"
               "  adaptive-exit COMMAND --help                            # a command's options and examples")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in CORE_COMMANDS.values():
        command.add_arguments(add_command(sub, command.name, command.summary, command.description, command.examples, [common]))
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
        if args.command in CORE_COMMANDS:
            return CORE_COMMANDS[args.command].run(args, explicit_threads)
        configure_threads(explicit_threads)
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


UNSAFE_ADVICE = re.compile(r"[^.]*weights_only\s*=\s*False[^.]*\.?", re.I)


def _one_line(exc: BaseException) -> str:
    """The error as one line, without library advice to do the unsafe thing (torch suggests
    turning its weights-only loading off, which would unpickle arbitrary objects)."""
    text = " ".join(UNSAFE_ADVICE.sub("", str(exc)).split()) or type(exc).__name__
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


if __name__ == "__main__":
    sys.exit(main())
