"""Serving under rising load: a fixed full-depth server vs. the budget-controlled one.

Starts ``adaptive-exit serve`` twice on loopback (in a subprocess each, so the load
generator does not share the server's interpreter): (a) ``--policy full`` and (b)
``--slo p95:TARGET``, whose controller moves along the model's calibrated budget table.
For each rate, SST-2 dev sentences are sent one per request at a constant rate (open
loop: a slow server does not slow the sender) for a bounded count and time; the table
gives throughput, client-side p50/p95 latency, accuracy against the gold labels and the
mean budget (mean layers run / all layers) per rate. Before each rate the server idles
long enough for the controller to return to full quality.

    adaptive-exit calibrate --model runs/sst2-pabee/model --budget mean:0.5 --levels mean:0.7,mean:0.35
    python benchmarks/serve_load.py [--model runs/sst2-pabee/model] [--slo p95:100ms] [--rates 10 20 40 80]

Prints a table and writes runs/benchmarks/serve_load.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from adaptive_exit.budgets import BudgetTable
from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.deploy.serving import percentile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import add_save_flag, print_table, results_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``adaptive-exit serve`` in a subprocess, for the duration of a ``with`` block."""

    def __init__(self, args: list[str], threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = ["adaptive-exit", "serve", *args, "--port", str(self.port), "--threads", str(threads), "-q"]

    def __enter__(self) -> "ServerProcess":
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(self.command)} exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start within 180 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, samples: list[dict], rate: float, count: int, max_seconds: float, timeout: float) -> dict:
    """Send ``count`` requests at ``rate``/s (at most ``max_seconds`` of sending); wait for every answer."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    records: list[dict] = []

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def one(sample: dict) -> None:
            start = time.monotonic()
            try:
                response = await client.post(url + "/predict", json={"text": sample["text"]})
                result = response.json()["results"][0] if response.status_code == 200 else None
            except httpx.HTTPError:
                result = None
            records.append({"latency_ms": 1000 * (time.monotonic() - start), "result": result, "gold": sample["label"],
                            "done": time.monotonic()})

        tasks, start = [], time.monotonic()
        for i in range(count):
            due = start + i / rate
            if due - start > max_seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(samples[i % len(samples)])))
        await asyncio.gather(*tasks)
        metrics = (await client.get(url + "/metrics")).json()
    answered = [r for r in records if r["result"] is not None]
    latencies = [r["latency_ms"] for r in answered]
    elapsed = max(r["done"] for r in records) - start
    return {"rate": rate, "sent": len(records), "answered": len(answered), "throughput": len(answered) / elapsed,
            "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
            "accuracy": sum(str(r["result"]["label"]) == str(r["gold"]) for r in answered) / max(1, len(answered)),
            "mean_budget": sum(r["result"]["exit_layer"] / r["result"]["num_layers"] for r in answered) / max(1, len(answered)),
            "budget_at_end": metrics.get("budget")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/sst2-pabee/model", help="a saved text model folder (or exported)")
    parser.add_argument("--slo", default="p95:100ms", help="the controlled server's latency target (default: p95:100ms)")
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 20, 40, 60, 80, 100], help="requests per second")
    parser.add_argument("--count", type=int, default=600, help="requests per rate at most (default 600)")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="seconds of sending per rate at most (default 15)")
    parser.add_argument("--idle-seconds", type=float, default=4.0, help="pause before each rate (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    add_save_flag(parser)
    args = parser.parse_args()

    model_dir = Path(args.model)
    table = BudgetTable.load(model_dir)
    recipe, _ = load_recipe(model_dir.parent / "config.yaml", [f"run_dir={model_dir.parent}"])
    pipeline = Pipeline(recipe)
    samples = list(pipeline.domain.load_split(pipeline.data_cfg, recipe.eval.split, recipe.seed))
    target = float(args.slo.split(":")[1].rstrip("ms"))
    common = ["--model", str(model_dir), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    servers = {"full (fixed)": [*common, "--policy", "full"], f"controlled ({args.slo})": [*common, "--slo", args.slo]}
    rows = []
    for name, server_args in servers.items():
        with ServerProcess(server_args, args.threads) as server:
            asyncio.run(load(server.url, samples, args.rates[0], 20, 5, 60))  # warm-up
            for rate in args.rates:
                time.sleep(args.idle_seconds)
                row = asyncio.run(load(server.url, samples, rate, args.count, args.max_seconds, 120))
                row.update(server=name, meets_target=row["p95_ms"] <= target)
                rows.append(row)
                print(f"  {name} @ {rate:g}/s: p95 {row['p95_ms']:.0f} ms, accuracy {row['accuracy']:.4f}", flush=True)

    print(f"{args.model}: SST-2 dev sentences one per request, {args.threads} server thread(s), target {args.slo}; "
          f"budget table: {', '.join(f'{b} -> {p}' for b, p in table.entries.items()) or 'empty'}")
    print_table(["server", "rate (req/s)", "throughput", "p50 ms", "p95 ms", "meets target", "accuracy", "mean budget"],
                [[r["server"], f"{r['rate']:g}", f"{r['throughput']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}",
                  "yes" if r["meets_target"] else "no", f"{r['accuracy']:.4f}", f"{r['mean_budget']:.2f}"] for r in rows])
    out = results_path("serve_load.json", args.save)
    out.write_text(json.dumps({"model": args.model, "slo": args.slo, "threads": args.threads, "cores": os.cpu_count(),
                               "machine": platform.processor() or platform.machine(), "budget_table":
                               {str(b): p.spec() if hasattr(p, "spec") else str(p) for b, p in table.entries.items()},
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
