"""Where a benchmark writes its JSON: ``runs/benchmarks/`` by default (ignored by git), or
``benchmarks/results/`` (the committed figures the README quotes) with ``--save``."""
from __future__ import annotations

import os
from pathlib import Path

COMMITTED = Path(__file__).resolve().parent / "results"
SCRATCH = Path(os.environ.get("ADAPTIVE_EXIT_BENCH_DIR", "runs/benchmarks"))


def results_path(name: str, save: bool) -> Path:
    folder = COMMITTED if save else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def add_save_flag(parser) -> None:
    """The ``--save`` option every benchmark shares."""
    parser.add_argument("--save", action="store_true",
                        help="update benchmarks/results/ (the committed figures); default: runs/benchmarks/")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table of already formatted cells, as the READMEs quote them."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
