"""A client for ``adaptive-exit serve``: text classification and speech enhancement over HTTP.

    adaptive-exit serve --model runs/sst2-pabee/model --slo p95:50ms --port 8000 &
    python examples/client.py text "a gripping, beautifully shot film" "two hours I will not get back"

    adaptive-exit serve --port 8001 --model "$(python -c 'from adaptive_exit.speech import pretrained; print(pretrained.path())')" &
    python examples/client.py speech noisy.wav enhanced.wav --url http://127.0.0.1:8001

Each answer carries the exit layer (text) or the stages used (speech, in the X-Stages-Used
header); ``/metrics`` reports latency percentiles, the current budget and exits per stage.
"""
from __future__ import annotations

import argparse
import json
import sys

import httpx


def classify(url: str, texts: list[str]) -> list[dict]:
    """One request for all ``texts`` (the server batches them with other clients' requests)."""
    response = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=60)
    if response.status_code != 200:
        raise SystemExit(f"{response.status_code}: {response.json().get('error')}")
    return response.json()["results"]


def enhance(url: str, source: str, target: str) -> dict:
    """Send a WAV file, write the enhanced WAV; returns the response headers of interest."""
    with open(source, "rb") as f:
        response = httpx.post(f"{url}/enhance", content=f.read(), headers={"content-type": "audio/wav"}, timeout=300)
    if response.status_code != 200:
        raise SystemExit(f"{response.status_code}: {response.json().get('error')}")
    with open(target, "wb") as f:
        f.write(response.content)
    return {k: v for k, v in response.headers.items() if k.lower().startswith("x-")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["text", "speech", "metrics"])
    parser.add_argument("args", nargs="*", help="texts, or INPUT.wav OUTPUT.wav")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    if args.kind == "text":
        for text, result in zip(args.args, classify(args.url, args.args)):
            print(f"{result['label']:>10}  p={result['score']:.2f}  exit layer {result['exit_layer']}/{result['num_layers']}  {text}")
    elif args.kind == "speech":
        if len(args.args) != 2:
            sys.exit("speech needs INPUT.wav OUTPUT.wav")
        print(json.dumps(enhance(args.url, *args.args)))
    else:
        print(json.dumps(httpx.get(f"{args.url}/metrics", timeout=10).json(), indent=2))


if __name__ == "__main__":
    main()
