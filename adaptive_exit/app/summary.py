"""Human summaries the CLI prints at the end of ``run``, ``evaluate``, ``sweep`` and
``calibrate``; every figure is also in the run folder's JSON files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptive_exit.evaluation import format_table, rows_from_report


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def run_summary(report: dict[str, Any], pipeline: Any) -> str:
    primary = report["primary_metric"]
    metrics = list(report["full_model"].keys())
    rows = rows_from_report(report)
    lines = [format_table(rows, metrics), "(* = on the Pareto front of quality vs speed-up: nothing is both better and faster)", ""]
    front = [r for r in rows if r.pareto and r.family not in ("static",)]
    if front:
        lines.append(f"Best early-exit operating points ({primary}):")
        for r in sorted(front, key=lambda r: r.speedup):
            lines.append(f"  {r.name:<48} {primary} {r.metrics[primary]:.4f} at {r.speedup:.2f}x "
                         f"({_pct(r.saved_fraction)} of the compute saved)")
    oracle = next((r for r in rows if r.family == "oracle"), None)
    lines.append(f"Full model: {primary} {report['full_model'][primary]:.4f}."
                 + (f" Oracle (each sample's earliest best stage, an upper bound): {oracle.metrics[primary]:.4f} "
                    f"at {oracle.speedup:.2f}x." if oracle else ""))
    timing = report.get("timing")
    if timing:
        agree = timing.get("matches_trace_replay")
        lines.append(
            f"Wall-clock ({timing['policy']}, batch {timing['batch_size']}, {timing['threads']} threads, "
            f"{timing['num_samples']} samples): full model {timing['full_seconds']:.3f} s; with compaction "
            f"{timing['compact_seconds']:.3f} s ({timing['wall_speedup_compact']:.2f}x, layers {timing['layer_speedup']:.2f}x); "
            f"batch-sync {timing['batch_sync_seconds']:.3f} s ({timing['wall_speedup_batch_sync']:.2f}x)"
            + ("" if agree is None else f"; exits equal trace replay: {'yes' if agree else 'NO'}") + ".")
    if report.get("calibration"):
        lines.append(_calibration_line(report["calibration"], primary))
    run_dir = Path(pipeline.run_dir)
    files = [name for name in ("results.json", "sweep.csv", "plot.png", "calibration.json", "config.yaml")
             if (run_dir / name).exists()]
    lines.append(f"Written to {run_dir}/: {', '.join(files)}, traces/, model/ (results.json holds every figure).")
    return "\n".join(lines)


def _calibration_line(cal: dict[str, Any], primary: str | None = None) -> str:
    if "max_drop" in cal:
        return _certified_line(cal)
    held = cal.get("heldout") or cal["calibration"]
    part = "held-out half" if cal.get("heldout") else "calibration data"
    metric = primary or next((k for k in held if k not in ("achieved", "unit", "cost_fraction", "mean_stages",
                                                            "speedup", "num_samples")), None)
    quality = f", {metric} {held[metric]:.4f}" if metric and metric in held else ""
    return (f"Calibrated to {cal['budget']}: {cal['policy']} -> on the {part}: {held['achieved']:.4g} {held['unit']} "
            f"(target {cal['target']:g}), {held['mean_stages']:.2f} stages ({held['speedup']:.2f}x){quality}.")


def calibration_summary(report: dict[str, Any], pipeline: Any) -> str:
    lines = [_calibration_line(report)]
    for name, level in (report.get("levels") or {}).items():
        if name != report["budget"]:
            lines.append("  also " + _calibration_line(level)[0].lower() + _calibration_line(level)[1:])
    lines.append(f"The policy is now the default of {pipeline.model_dir} and its budget table "
                 f"({Path(pipeline.model_dir) / 'budget_policies.json'}) lists every calibrated budget; "
                 f"run with --budget {report['budget']} to pick it. Report: {Path(pipeline.run_dir) / 'calibration.json'}.")
    return "\n".join(lines)


def _certified_line(cal: dict[str, Any]) -> str:
    policy = cal["policy"] if len(cal["policy"]) <= 60 else cal["policy"][:40] + "..."
    line = (f"Certified {cal['budget']} ({cal['metric']}, {100 * cal['confidence']:g}% confidence, "
            f"{cal['certified']} of {cal['tested']} candidates pass): {policy} -> on the calibration data: drop "
            f"{cal['drop']:.4g} (certified bound {cal['bound']:.4g}), {cal['speedup']:.2f}x")
    held = cal.get("heldout")
    if held:
        line += f"; held-out half: drop {held['drop']:.4g}, {held['speedup']:.2f}x"
    return line + "."
