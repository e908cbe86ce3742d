"""Compare TOKEE curves of several models at equal FLOPs (e.g. before and after
self-sampling fine-tuning), from JSON files written by conll_token_exit.py.

    python benchmarks/compare_token_exit.py benchmarks/results/conll_token_exit.json \\
        benchmarks/results/conll_token_exit_self_sampled.json --at 1.5 2 2.5 3 3.5 4

For each file and FLOPs speed-up: the best TOKEE entity F1 reachable (upper envelope over
thresholds and windows, interpolated), and the file's full-model F1. Prints a table and
writes benchmarks/results/compare_token_exit.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adaptive_exit.text.tagging.token_eval import envelope_f1_at, rows_from_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--at", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    add_save_flag(parser)
    args = parser.parse_args()
    table = []
    for name in args.files:
        data = json.loads(Path(name).read_text())
        rows = rows_from_json(data["rows"])
        full = next(r for r in rows if r.family == "full")
        at = {str(s): envelope_f1_at(rows, s, ("tokee",)) for s in args.at}
        table.append({"file": name, "run": data["run"], "full_f1": full.f1, "tokee_f1_at": at})
    print("| run | full model | " + " | ".join(f"TOKEE at {s}x" for s in args.at) + " |")
    print("|---|---|" + "---|" * len(args.at))
    for t in table:
        cells = ["beyond" if v is None else f"{100 * v:.2f}" for v in t["tokee_f1_at"].values()]
        print(f"| {t['run']} | {100 * t['full_f1']:.2f} | " + " | ".join(cells) + " |")
    out = results_path("compare_token_exit.json", args.save)
    out.write_text(json.dumps(table, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
