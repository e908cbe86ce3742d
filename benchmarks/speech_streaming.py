"""Streaming cost and bounded memory of the causal enhancer.

1. Chunk-level early exit on the VoiceBank noisy files, one thread: real-time factor
   and per-chunk processing time (p50/p95, against the chunk length) for several chunk
   lengths, at full depth and under a convergence policy.
2. A long recording (default one hour: the VoiceBank noisy files repeated, 16-bit WAV)
   enhanced by ``adaptive-exit enhance`` in a subprocess: wall time and the peak
   resident memory of that process (``ru_maxrss``).

    python benchmarks/speech_streaming.py --model runs/speech-dual-path/model [--minutes 60] [--save]

Prints tables and writes runs/benchmarks/speech_streaming.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adaptive_exit.speech.data import PairedFolder
from adaptive_exit.speech.domain import DOMAIN
from adaptive_exit.speech.streaming import StreamingEnhancer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def chunk_costs(model, audio: list[np.ndarray], chunks_ms: list[float], policies: list[str], block: int) -> list[dict]:
    rows = []
    for policy in policies:
        for chunk_ms in chunks_ms:
            enhancer = StreamingEnhancer(model, policy, chunk_ms)
            enhancer.push(audio[0][:16000])  # warm-up
            enhancer = StreamingEnhancer(model, policy, chunk_ms)
            total = 0.0
            for clip in audio:  # one continuous stream: the files back to back, pushed in blocks as a sound card would
                for i in range(0, len(clip), block):
                    start = time.perf_counter()
                    enhancer.push(clip[i:i + block])
                    total += time.perf_counter() - start
            enhancer.flush()
            stats = enhancer.stats
            rows.append({"policy": policy, "chunk_ms": chunk_ms, "rtf": stats.rtf, "rtf_with_stft": total / stats.audio_seconds,
                         "mean_stages": stats.mean_stages, "latency_ms_p50": stats.latency_ms(0.5),
                         "latency_ms_p95": stats.latency_ms(0.95), "latency_ms_max": stats.latency_ms(1.0)})
            r = rows[-1]
            print(f"  {policy} @ {chunk_ms:g} ms: RTF {r['rtf_with_stft']:.3f}, p95 {r['latency_ms_p95']:.1f} ms", flush=True)
    return rows


def long_file(model_dir: str, audio: list[np.ndarray], minutes: float, threads: int) -> dict:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "long.wav"
        target = int(minutes * 60 * 16000)
        with sf.SoundFile(str(path), "w", 16000, 1, subtype="PCM_16") as out:
            written = 0
            while written < target:
                for clip in audio:
                    piece = clip[: target - written]
                    out.write(piece)
                    written += len(piece)
                    if written >= target:
                        break
        command = [sys.executable, "-m", "adaptive_exit", "enhance", "--model", model_dir, "--input", str(path),
                   "--output", str(Path(scratch) / "out"), "--threads", str(threads)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if done.returncode:
            raise RuntimeError(f"enhance failed: {done.stderr[-2000:]}")
        record = json.loads(done.stdout.strip().splitlines()[-1])
        return {"minutes": minutes, "file_mb": path.stat().st_size / 2**20, "wall_s": seconds,
                "peak_rss_mb": peak_kb / 1024, "record": record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/speech-dual-path/model", help="a saved causal (dual-path) model folder")
    parser.add_argument("--chunks-ms", type=float, nargs="+", default=[32, 40, 64])
    parser.add_argument("--policies", nargs="+", default=["full", "patience:1,threshold=0.05,distance=relative"])
    parser.add_argument("--block-ms", type=float, default=10.0, help="how much audio each push carries (default 10 ms)")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long recording (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("ADAPTIVE_EXIT_DATA", "../shared/data"))
    folder = PairedFolder(data / "voicebank_demand_16k")
    audio = [folder[i]["noisy"] for i in range(len(folder))]
    model, _ = DOMAIN.load_model(args.model)
    rows = chunk_costs(model, audio, args.chunks_ms, args.policies, int(args.block_ms * 16))
    print(f"\n{args.model}: streamed VoiceBank noisy files ({sum(map(len, audio)) / 16000:.0f} s), {args.threads} thread(s), "
          f"{args.block_ms:g} ms per push")
    print("| policy | chunk ms | RTF (model) | RTF (with STFT, overlap-add) | mean stages | chunk time p50 / p95 / max ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['chunk_ms']:g} | {r['rtf']:.3f} | {r['rtf_with_stft']:.3f} | {r['mean_stages']:.2f} | "
              f"{r['latency_ms_p50']:.1f} / {r['latency_ms_p95']:.1f} / {r['latency_ms_max']:.1f} |")
    report = {"model": args.model, "threads": args.threads, "block_ms": args.block_ms,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "chunks": rows}
    if args.minutes:
        report["long_file"] = long_file(args.model, audio, args.minutes, args.threads)
        lf = report["long_file"]
        print(f"\n{lf['minutes']:g}-minute file ({lf['file_mb']:.0f} MB): enhanced in {lf['wall_s']:.0f} s "
              f"(RTF {lf['wall_s'] / (60 * lf['minutes']):.3f}), peak memory {lf['peak_rss_mb']:.0f} MB, mode {lf['record'].get('mode')}")
    out = results_path("speech_streaming.json", args.save)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
