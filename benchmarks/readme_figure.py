"""The README's picture: quality vs speed-up of a run's policies, static truncation and
the oracle, drawn from its results.json as SVG (text, so it lives in the repository).

    python benchmarks/readme_figure.py --run runs/sst2-pabee --out docs/img/sst2-tradeoff.svg
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive_exit.evaluation import plot_rows, rows_from_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/sst2-pabee")
    parser.add_argument("--out", default="docs/img/sst2-tradeoff.svg")
    parser.add_argument("--title", default="SST-2 dev, all-MiniLM-L6-v2 with an exit after every layer")
    args = parser.parse_args()
    report = json.loads((Path(args.run) / "results.json").read_text())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_rows(rows_from_report(report), report["primary_metric"], args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
