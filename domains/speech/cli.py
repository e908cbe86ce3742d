"""``adaptive-exit enhance``: enhance WAV files with a saved progressive model under an exit policy."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

COMMAND_HELP = {"enhance": "enhance noisy speech files with a saved progressive model under an exit policy"}


def register(subparsers, common=None) -> None:
    from adaptive_exit.app.cli import add_command

    parser = add_command(
        subparsers, "enhance", COMMAND_HELP["enhance"],
        "Enhance a file or every audio file (.wav, .flac, .ogg) under a folder. Outputs are WAVs at each input's "
        "own sample rate and length, under --output at the input's relative path; nothing that exists is "
        "overwritten without --overwrite, and inputs are never written. Each file gives one JSON record on "
        "stdout (stages used, real-time factor, or the error for that file); the rest are still enhanced.",
        ["adaptive-exit enhance --example --output enhanced/ --overwrite         # the shipped model on its example",
         "adaptive-exit enhance --input noisy/ --output enhanced/ --budget mean:0.5    # the shipped model",
         "adaptive-exit enhance --model runs/speech-voicebank/model --input noisy/ --output enhanced/",
         "adaptive-exit enhance --model runs/speech-voicebank/model --input a.wav --output out/ --budget mean:0.5"],
        parents=[common] if common else [])
    parser.add_argument("--model", default=None, help="a saved or exported speech model folder (RUN_DIR/model); "
                                                       "default: the model shipped with the package")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an audio file (.wav, .flac, .ogg) or a folder of them")
    source.add_argument("--example", action="store_true",
                        help="the short noisy recording shipped with the package (VoiceBank+DEMAND p232_246, CC BY 4.0)")
    parser.add_argument("--output", default="enhanced", help="folder for the enhanced WAVs (created if missing; "
                                                             "default: ./enhanced)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--policy", help="exit policy, e.g. 'patience:1,threshold=0.02,distance=relative' "
                       "(default: the model's saved policy)")
    group.add_argument("--budget", help="a budget, e.g. mean:0.5 (the model's calibrated policy for it) or max:0.5 "
                       "(the default policy capped at half the stages for every file)")
    parser.add_argument("--stream", action="store_true",
                        help="chunk-level early exit: each chunk of every file runs the stages the policy asks for "
                             "(causal models; files longer than --max-offline-seconds always stream)")
    parser.add_argument("--chunk-ms", type=float, default=40.0, help="streaming chunk length in ms (default 40)")
    parser.add_argument("--max-offline-seconds", type=float, default=60.0,
                        help="longer files are streamed in bounded memory (causal models; default 60)")
    parser.add_argument("--high-band", choices=["keep", "drop"], default="keep",
                        help="inputs above the model's rate: keep the original above the model band, scaled by the "
                             "model's suppression in its top band (default), or drop it")
    parser.set_defaults(func=run)


def plan_outputs(files: list[Path], root: Path | None, out_dir: Path) -> dict[Path, Path]:
    """Where each input's enhanced WAV goes: its path relative to the input folder with a
    .wav suffix; inputs that would share a name (a.wav, a.flac) keep distinct names
    (a.wav, a_flac.wav)."""
    wanted = {f: (f.relative_to(root) if root else Path(f.name)).with_suffix(".wav") for f in files}
    taken: dict[Path, int] = {}
    for target in wanted.values():
        taken[target] = taken.get(target, 0) + 1
    out = {}
    for f, target in wanted.items():
        if taken[target] > 1 and f.suffix.lower() != ".wav":
            target = target.with_name(f"{f.stem}_{f.suffix.lower().lstrip('.')}.wav")
        out[f] = out_dir / target
    return out


def run(args: argparse.Namespace) -> int:
    """Enhance each file; with several launched processes files are sharded by rank,
    each rank writes its own WAVs, and the main process prints all records in order."""
    from tqdm.auto import tqdm

    import torch

    from adaptive_exit.budgets import BudgetSpec, check_request_options, policy_for_request
    from adaptive_exit.runtime.distributed import current_shard, map_ordered
    from adaptive_exit.runtime.runner import EarlyExitRunner
    from adaptive_exit.runtime.staged import StreamingModel
    from adaptive_exit.runtime.threads import progress_enabled

    from adaptive_exit.app.domain import load_any_model

    from adaptive_exit import io

    from .audio import audio_header, is_float_file, list_audio, read_audio, save_audio
    from .enhance import enhance_recording
    from .streaming import stream_file

    if args.example:
        from .examples import noisy_path

        args.input = str(noisy_path())
    source, out_dir = Path(args.input), Path(args.output)
    if not source.exists():
        raise FileNotFoundError(f"--input {source} not found")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output {out_dir} is a file; give a folder for the enhanced WAVs")
    if out_dir.resolve() == (source.resolve() if source.is_dir() else source.resolve().parent):
        raise ValueError(f"--output {out_dir} is the input folder: enhanced files would replace or mix with the "
                         "originals; give another folder")
    if source.is_dir():
        files = [f for f in list_audio(source) if out_dir.resolve() not in f.resolve().parents]
        if not files:
            raise ValueError(f"--input {source} holds no audio files (.wav, .flac, .ogg)")
    else:
        files = [source]
    targets = plan_outputs(files, source if source.is_dir() else None, out_dir)
    if args.model is None:
        from . import pretrained

        args.model = str(pretrained.path())
    check_request_options(args.policy, args.budget)  # a bad --policy/--budget fails before the model loads
    model, default_policy, _ = load_any_model(args.model)  # a saved model, or an exported (onnxruntime) one
    runner = EarlyExitRunner(model, policy_for_request(args.model, default_policy, args.policy, args.budget))

    streams = isinstance(model, StreamingModel)  # causal models carry their state across chunks

    budget = BudgetSpec.parse(args.budget) if args.budget else None
    costs = [float(model.stage_cost(k)) for k in range(model.num_stages)]

    def enhance(path: Path) -> dict:
        record: dict = {"input": str(path)}
        target = targets[path]
        try:
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{target} exists; pass --overwrite to replace it, or another --output")
            io.remove_stale_temporaries(target.parent, target.name)  # left by an earlier run that was killed
            subtype = "FLOAT" if is_float_file(path) else "PCM_16"
            info = audio_header(path)
            duration = info.frames / info.samplerate
            if streams and (args.stream or duration > args.max_offline_seconds):
                record.update(_streamed(path, target, subtype))
            else:
                if args.stream:
                    raise ValueError(f"--stream needs a causal PyTorch model with per-layer state (architecture: "
                                     f"dual-path or dprnn); {args.model} does not stream")
                record.update(_offline(path, target, subtype))
            if info.channels > 1:
                record["channels"] = info.channels
                record["note"] = f"{info.channels} channels were averaged to one (the output is mono)"
        except (ValueError, OSError, RuntimeError) as exc:  # this file fails; the others are still enhanced
            record["error"] = " ".join(str(exc).split())
        return record

    def _record(target: Path, mode: str, stages: float, compute: float, duration: float, rate: int, seconds: float,
                clipped: int, **streaming) -> dict:
        """One schema for offline and streamed files: stages used are counted from 1, the compute
        is the share of the full model's (stage 1 includes the encoder, so 1 of 6 stages can cost
        more than 1/6), figures are rounded."""
        record = {"output": str(target), "mode": mode, "stages_used": round(stages, 2), "num_stages": model.num_stages,
                  "compute": round(compute, 3), "duration_s": round(duration, 3), "sample_rate": rate,
                  "processing_s": round(seconds, 3), "rtf": round(seconds / duration, 4),
                  "chunk_ms": streaming.get("chunk_ms"), "chunk_latency_ms_p95": streaming.get("latency")}
        if budget is not None:
            record["budget"] = str(budget)
            record["budget_met"] = not budget.kind_of.fraction or compute <= budget.value * (1 + 1e-9)
        if clipped:
            record["warning"] = f"{clipped} samples above full scale were clipped in the 16-bit output"
        return record

    def _offline(path: Path, target: Path, subtype: str) -> dict:
        audio, orig_sr, _ = read_audio(path, None)  # mono at the file's rate, or a clear ValueError
        start = time.perf_counter()
        enhanced, result = enhance_recording(runner, audio, orig_sr, args.high_band)
        seconds = time.perf_counter() - start
        clipped = save_audio(target, enhanced, orig_sr, subtype)
        return _record(target, "offline", int(result.exit_stage[0]) + 1, float(result.cost[0]) / result.full_cost,
                       len(audio) / orig_sr, orig_sr, seconds, clipped)

    def _streamed(path: Path, target: Path, subtype: str) -> dict:
        start = time.perf_counter()
        stats, facts = stream_file(model, path, target, runner.policy, args.chunk_ms, args.high_band, subtype)
        seconds = time.perf_counter() - start
        return _record(target, "stream", stats.mean_stages, stats.compute_fraction(costs),
                       facts["samples"] / facts["sample_rate"], facts["sample_rate"], seconds, facts["clipped"],
                       chunk_ms=args.chunk_ms, latency=round(stats.latency_ms(0.95), 2))

    failures = printed = 0
    spent = []
    bar = tqdm(total=len(files), desc="enhancing", unit="file", leave=False,
               disable=len(files) < 2 or not current_shard().is_main or not progress_enabled())
    for record in map_ordered(files, enhance):  # sharded by file under torchrun / accelerate launch
        printed += 1
        bar.update(1)
        if "error" in record:
            failures += 1
            print(f"adaptive-exit enhance: error: {record['input']}: {record['error']}", file=sys.stderr, flush=True)
            continue
        spent.append(record["compute"])
        print(json.dumps(record), flush=True)
    bar.close()
    if budget is not None and budget.kind_of.fraction and spent:
        achieved = budget.kind_of.measure(torch.tensor(spent, dtype=torch.float64))
        if achieved > budget.value * (1 + 1e-9):
            print(f"adaptive-exit enhance: warning: budget {budget} not met: the files used {achieved:.3f} of the full "
                  f"compute ({budget.kind}); even the cheapest exit costs more on this model (its first stage "
                  f"is {costs[0] / sum(costs):.2f} of it)", file=sys.stderr, flush=True)
    return 1 if printed and failures == printed else 0
