"""Run under torchrun (or alone): evaluate, predict and enhance on prepared run folders.

    python sharded_script.py ROOT TAG

ROOT holds the text and speech recipes, run folders ``text-TAG`` / ``speech-TAG``,
``inputs.txt`` and ``wavs/``; each rank's stdout of predict/enhance goes to
``ROOT/TAG-predict-rankR.jsonl`` / ``ROOT/TAG-enhance-rankR.jsonl``.
"""
import contextlib
import os
import sys
from pathlib import Path

from adaptive_exit.app.cli import main

root, tag = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ.get("RANK", "0"))
common = ["eval.timing_repeats=1"]
assert main(["evaluate", str(root / "text.yaml"), f"run_dir={root / f'text-{tag}'}", *common]) == 0
assert main(["evaluate", str(root / "speech.yaml"), f"run_dir={root / f'speech-{tag}'}", *common]) == 0
with open(root / f"{tag}-predict-rank{rank}.jsonl", "w") as out, contextlib.redirect_stdout(out):
    assert main(["predict", "--model", str(root / f"text-{tag}" / "model"), "--input", str(root / "inputs.txt"), "--batch-size", "2"]) == 0
with open(root / f"{tag}-enhance-rank{rank}.jsonl", "w") as out, contextlib.redirect_stdout(out):
    assert main(["enhance", "--model", str(root / f"speech-{tag}" / "model"), "--input", str(root / "wavs"),
                 "--output", str(root / f"{tag}-enhanced")]) == 0

import torch.distributed as dist  # noqa: E402

if dist.is_initialized():  # leave the process group cleanly before the interpreter tears threads down
    dist.barrier()
    dist.destroy_process_group()
