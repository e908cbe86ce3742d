"""Narrow-band (telephone) speech: does every stage make 8 kHz recordings better?

The benchmark makes its own test set: the clean VoiceBank utterances band-limited to
8 kHz (resampled to 8 kHz), mixed at 0, 5, 10 and 15 dB SNR with several noise types
(the DEMAND noise of each VoiceBank pair, its noisy minus clean, and the clips in
noise_clips), each utterance with a different noise, seeded. Each mixture is enhanced at
8 kHz through the model (up to its rate and back, ``enhance_recording``) exiting after
every stage k = 1 .. K, and scored at 8 kHz: narrow-band PESQ (P.862) and STOI.

    python benchmarks/speech_narrowband.py --model runs/speech-dual-path/model [--save]

Prints a table and writes runs/benchmarks/speech_narrowband.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.speech.audio import list_audio, load_audio, resample
from adaptive_exit.speech.data import PairedFolder, mix_at_snr
from adaptive_exit.speech.domain import DOMAIN
from adaptive_exit.speech.enhance import enhance_recording
from adaptive_exit.speech.metrics import score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402

RATE = 8000
METRICS = ("pesq_nb", "stoi")


def mixtures(data: Path, snrs: list[float], seed: int) -> list[dict]:
    pairs = PairedFolder(data / "voicebank_demand_16k")
    clips = [resample(load_audio(f), 16000, RATE) for f in list_audio(data / "noise_clips")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(pairs)):
        item = pairs[i]
        clean = resample(item["clean"], 16000, RATE)
        demand = resample(item["noisy"] - item["clean"], 16000, RATE)
        noises = [("demand", demand)] + [(f"clip{j}", c) for j, c in enumerate(clips)]
        name, noise = noises[i % len(noises)]
        if len(noise) < len(clean):
            noise = np.tile(noise, int(np.ceil(len(clean) / len(noise))))
        start = int(rng.integers(0, len(noise) - len(clean) + 1))
        segment = noise[start:start + len(clean)]
        for snr in snrs:
            noisy = mix_at_snr(clean.astype(np.float64), segment.astype(np.float64), snr)
            peak = max(np.abs(noisy).max(), 1e-9)
            scale = 0.9 / peak if peak > 0.9 else 1.0
            out.append({"name": item["name"], "noise": name, "snr": snr, "clean": (clean * scale).astype(np.float32),
                        "noisy": (noisy * scale).astype(np.float32)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/speech-dual-path/model", help="a saved speech model folder")
    parser.add_argument("--snrs", type=float, nargs="+", default=[0, 5, 10, 15])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    add_save_flag(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(os.environ.get("ADAPTIVE_EXIT_DATA", "../shared/data"))
    items = mixtures(data, args.snrs, args.seed)
    model, _ = DOMAIN.load_model(args.model)
    columns = ["noisy"] + [f"stage {k}" for k in range(1, model.num_stages + 1)]
    scores = {c: [] for c in columns}
    for item in items:
        scores["noisy"].append(score(item["clean"], item["noisy"], RATE, METRICS))
        for k in range(1, model.num_stages + 1):
            enhanced, _ = enhance_recording(EarlyExitRunner(model, f"budget:max_stages={k}"), item["noisy"], RATE)
            scores[f"stage {k}"].append(score(item["clean"], enhanced, RATE, METRICS))
    table = {}
    for snr in args.snrs:
        rows = [i for i, item in enumerate(items) if item["snr"] == snr]
        table[str(snr)] = {c: {m: float(np.nanmean([scores[c][i][m] for i in rows])) for m in METRICS} for c in columns}
    print(f"{args.model}: {len(items) // len(args.snrs)} VoiceBank utterances band-limited to 8 kHz, "
          f"noises {sorted({i['noise'] for i in items})}, scored at 8 kHz")
    for metric in METRICS:
        print(f"\n{metric}\n| SNR dB | " + " | ".join(columns) + " | every stage >= noisy |")
        print("|---" * (len(columns) + 2) + "|")
        for snr, row in table.items():
            ok = all(row[c][metric] >= row["noisy"][metric] for c in columns[1:])
            print(f"| {snr} | " + " | ".join(f"{row[c][metric]:.3f}" for c in columns) + f" | {'yes' if ok else 'no'} |")
    out = results_path("speech_narrowband.json", args.save)
    out.write_text(json.dumps({"model": args.model, "rate": RATE, "snrs": args.snrs, "seed": args.seed,
                               "utterances": len(items) // len(args.snrs), "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
