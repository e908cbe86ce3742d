"""A run's report on disk: the sweep as CSV, the quality-vs-speed-up plot, the text table."""
from __future__ import annotations

import csv
import math
import io as _stdio
import logging
from pathlib import Path
from typing import Any, Sequence

from adaptive_exit import io

from .sweeps import Row, rows_from_report

logger = logging.getLogger(__name__)


def sweep_csv(rows: list[Row]) -> str:
    flat = [r.flat() for r in rows]
    fields: list[str] = []
    for item in flat:
        fields.extend(k for k in item if k not in fields)
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def plot_rows(rows: list[Row], primary: str, path: str | Path, title: str = "") -> None:
    """Quality vs speed-up: one line per policy family, static truncation dashed. The axes
    fit the policies and baselines; the oracle (an upper bound, often far above them) is
    drawn inside the frame when it fits and otherwise marked at the edge with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(row.family, []).append(row)
    oracle = families.pop("oracle", [])
    for family, items in families.items():
        items = sorted(items, key=lambda r: r.speedup)
        xs = [r.speedup for r in items]
        ys = [r.metrics[primary] for r in items]
        if family == "static":
            ax.plot(xs, ys, "k--", marker="s", ms=4, label="static truncation")
        else:
            ax.plot(xs, ys, marker="o", ms=4, label=family)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.speedup)
    if front:
        ax.plot([r.speedup for r in front], [r.metrics[primary] for r in front], color="grey", alpha=0.35, lw=6, zorder=0, label="Pareto front")
    values = [r.metrics[primary] for items in families.values() for r in items if not math.isnan(r.metrics[primary])]
    if values:
        low, high = min(values), max(values)
        pad = 0.08 * (high - low or abs(high) or 1.0)
        ax.set_ylim(low - pad, high + pad)
    for r in oracle:
        q = r.metrics[primary]
        bottom, top = ax.get_ylim()
        if math.isnan(q):
            continue
        if bottom <= q <= top:
            ax.scatter([r.speedup], [q], marker="*", s=140, color="gold", edgecolor="black", zorder=5, label="oracle (upper bound)")
        else:
            edge = top if q > top else bottom
            ax.scatter([r.speedup], [edge], marker="^" if q > top else "v", s=90, color="gold", edgecolor="black", zorder=5,
                       clip_on=False, label="oracle (upper bound, off scale)")
            ax.annotate(f"oracle {q:.4g} at {r.speedup:.2f}x", (r.speedup, edge), xytext=(-8, -14 if q > top else 8),
                        textcoords="offset points", ha="right", fontsize=8)
    ax.set_xlabel("speed-up (stages / mean stages used)")
    ax.set_ylabel(primary)
    ax.set_title(title or f"{primary} vs speed-up")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    plt.close(fig)


def write_report(report: dict[str, Any], run_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write results.json, sweep.csv and plot.png into ``run_dir``."""
    run_dir = Path(run_dir)
    rows = rows_from_report(report)
    paths = {"results": run_dir / "results.json", "csv": run_dir / "sweep.csv", "plot": run_dir / "plot.png"}
    io.write_json(paths["results"], report)
    io.write_text(paths["csv"], sweep_csv(rows))
    plot_rows(rows, report["primary_metric"], paths["plot"], title)
    return paths


def format_table(rows: list[Row], metrics: Sequence[str]) -> str:
    """A Markdown table of rows (used by the CLI and the recipe READMEs)."""
    head = "| policy | " + " | ".join(metrics) + " | mean stages | speed-up | compute saved |"
    sep = "|---|" + "---|" * len(metrics) + "---|---|---|"
    lines = [head, sep]
    for r in rows:
        values = " | ".join(f"{r.metrics[m]:.4f}" for m in metrics)
        star = " *" if r.pareto else ""
        lines.append(f"| {r.name}{star} | {values} | {r.mean_stages:.2f} | {r.speedup:.2f}x | {100 * r.saved_fraction:.1f}% |")
    return "\n".join(lines)
