"""``adaptive-exit enhance``: enhance WAV files with a saved progressive model under an exit policy."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def register(subparsers) -> None:
    parser = subparsers.add_parser("enhance", help="enhance noisy speech files with early exit")
    parser.add_argument("--model", required=True, help="a saved speech model folder (RUN_DIR/model)")
    parser.add_argument("--input", required=True, help="a WAV/FLAC file or a folder of them")
    parser.add_argument("--output", required=True, help="folder for the enhanced WAVs")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--policy", help="exit policy, e.g. 'patience:1,threshold=0.02,distance=relative'")
    group.add_argument("--budget", help="a fraction caps every file (0.5 adds budget:max_fraction=0.5 to the default "
                       "policy); a budget spec (mean:0.4) picks the model's calibrated policy for it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Enhance each file; with several launched processes files are sharded by rank,
    each rank writes its own WAVs, and the main process prints all records in order."""
    from adaptive_exit.budget import resolve_policy
    from adaptive_exit.distributed import map_ordered
    from adaptive_exit.runner import EarlyExitRunner

    from .audio import SAMPLE_RATE, list_audio, read_audio, resample, save_audio
    from .domain import load_speech_model
    from .stft import STFT

    model, default_policy = load_speech_model(args.model)
    policy = resolve_policy(args.model, default_policy, args.policy, args.budget)
    runner = EarlyExitRunner(model, policy)
    stft = STFT(compress=model.speech_config.compress)
    source = Path(args.input)
    if source.is_dir():
        files = list_audio(source)
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"input not found: {source}")
    out_dir = Path(args.output)

    def enhance(path: Path) -> dict:
        record: dict = {"input": str(path)}
        try:
            audio, orig_sr, orig_len = read_audio(path)  # mono 16 kHz, or a clear ValueError
            start = time.perf_counter()
            spec, frames = stft.batch([torch.from_numpy(audio)])
            with torch.no_grad():
                result = runner({"noisy_spec": spec, "frames": frames})
            enhanced = stft.waveform(result.output[0, ..., : int(frames[0])], len(audio)).numpy()
            seconds = time.perf_counter() - start
            enhanced = resample(enhanced, SAMPLE_RATE, orig_sr)
            enhanced = _fit_length(enhanced, orig_len)
            target = out_dir / (path.stem + ".wav")
            save_audio(target, enhanced, orig_sr)
            record.update({"output": str(target), "exit_stage": int(result.exit_stage[0]), "stages_used": int(result.exit_stage[0]) + 1,
                           "num_stages": model.num_stages, "cost_fraction": float(result.cost[0]) / result.full_cost,
                           "duration_s": len(audio) / SAMPLE_RATE, "sample_rate": orig_sr, "processing_s": seconds,
                           "rtf": seconds / (len(audio) / SAMPLE_RATE)})
        except (ValueError, FileNotFoundError) as exc:
            record["error"] = str(exc)
        return record

    failures = printed = 0
    for record in map_ordered(files, enhance):  # sharded by file under torchrun / accelerate launch
        printed += 1
        failures += "error" in record
        print(json.dumps(record), flush=True)
    return 1 if printed and failures == printed else 0


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))
