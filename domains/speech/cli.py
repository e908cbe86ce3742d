"""``adaptive-exit enhance``: enhance WAV files with a saved progressive model under an exit policy."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


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
    from adaptive_exit.budget import policy_for_request
    from adaptive_exit.distributed import map_ordered
    from adaptive_exit.runner import EarlyExitRunner

    from .audio import list_audio, read_audio, resample, save_audio
    from .domain import load_speech_model
    from .enhance import enhance_waveform

    model, default_policy = load_speech_model(args.model)
    runner = EarlyExitRunner(model, policy_for_request(args.model, default_policy, args.policy, args.budget))
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
            audio, orig_sr, orig_len = read_audio(path, model.sample_rate)  # mono at the model rate, or a clear ValueError
            start = time.perf_counter()
            enhanced, result = enhance_waveform(runner, audio)
            seconds = time.perf_counter() - start
            enhanced = _fit_length(resample(enhanced, model.sample_rate, orig_sr), orig_len)
            target = out_dir / (path.stem + ".wav")
            save_audio(target, enhanced, orig_sr)
            duration = len(audio) / model.sample_rate
            record.update({"output": str(target), "exit_stage": int(result.exit_stage[0]), "stages_used": int(result.exit_stage[0]) + 1,
                           "num_stages": model.num_stages, "cost_fraction": float(result.cost[0]) / result.full_cost,
                           "duration_s": duration, "sample_rate": orig_sr, "processing_s": seconds,
                           "rtf": seconds / duration})
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
