"""The HTTP server on loopback: concurrent clients get the offline runner's answers, bad
requests get 4xx with a message, the server keeps serving; the controller moves the budget."""
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from adaptive_exit.policies import build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.deploy.serving import BatchingServer, LatencyController, Level, budget_levels, create_app
from tests.text.helpers import WORDS, tiny_model, tiny_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server in a thread, for the duration of a test."""

    def __init__(self, server: BatchingServer):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(create_app(server), host="127.0.0.1", port=self.port, log_level="error")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        url = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def text_server(tmp_path):
    from adaptive_exit.text.serve import TextServeAdapter

    model = tiny_model("bert", num_labels=2)
    model.tokenizer = tiny_tokenizer(tmp_path)
    server = BatchingServer(model, TextServeAdapter(model), build_policy("patience:1"), max_batch=8, max_wait_ms=20)
    return model, server


def test_concurrent_requests_get_the_offline_answers(text_server):
    from adaptive_exit.text.data import TextCollator

    model, server = text_server
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (int(n),), generator=gen).tolist())
             for n in torch.randint(2, 12, (40,), generator=gen)]
    with Running(server) as url, httpx.Client(timeout=30) as client:
        def ask(i: int) -> dict:
            response = client.post(url + "/predict", json={"text": texts[i]})
            assert response.status_code == 200, response.text
            return response.json()["results"][0]

        with ThreadPoolExecutor(max_workers=8) as pool:  # a bounded client loop
            answers = list(pool.map(ask, range(len(texts))))
        metrics = client.get(url + "/metrics").json()
    offline = EarlyExitRunner(model, "patience:1")(TextCollator(model.tokenizer, 128)(
        [{"text": t, "text_pair": None, "label": None} for t in texts]))
    probs = torch.softmax(offline.output.double(), -1)
    for i, answer in enumerate(answers):
        assert answer["exit_layer"] == int(offline.exit_stage[i]) + 1
        assert answer["label"] == int(probs[i].argmax())
        assert answer["score"] == pytest.approx(float(probs[i].max()), abs=1e-5)
    assert metrics["requests"] == 40 and metrics["items"] == 40 and sum(metrics["exits_per_stage"]) == 40
    assert metrics["latency_ms"]["p95"] is not None


def test_bad_requests_get_4xx_and_the_server_keeps_serving(text_server):
    _, server = text_server
    with Running(server) as url, httpx.Client(timeout=30) as client:
        cases = [
            (dict(content=b'{"text": "unclosed', headers={"content-type": "application/json"}), 400, "malformed JSON"),
            (dict(content=b'{"texts": []}', headers={"content-type": "application/json"}), 400, "non-empty list"),
            (dict(content=b'{"txt": "typo"}', headers={"content-type": "application/json"}), 400, "unknown fields"),
            (dict(content=b"the movie", headers={"content-type": "text/plain"}), 415, "is not accepted"),
            (dict(content=json.dumps({"texts": ["a"] * 65}).encode(), headers={"content-type": "application/json"}), 413,
             "at most 64"),
            (dict(content=b"x" * (2 << 20), headers={"content-type": "application/json"}), 413, "over the limit"),
            (dict(content=b"\xff\xfe", headers={"content-type": "application/json"}), 400, "not UTF-8"),
        ]
        for kwargs, status, message in cases:
            response = client.post(url + "/predict", **kwargs)
            assert response.status_code == status, (kwargs, response.text)
            assert message in response.json()["error"]
            ok = client.post(url + "/predict", json={"texts": ["the movie is good", "bad plot"]})
            assert ok.status_code == 200 and len(ok.json()["results"]) == 2  # still serving
        assert client.get(url + "/metrics").json()["errors"] == len(cases)


def test_speech_endpoint_returns_the_offline_enhancement(tmp_path):
    import soundfile as sf

    from adaptive_exit.speech.data import SyntheticDataset
    from adaptive_exit.speech.domain import DOMAIN
    from adaptive_exit.speech.enhance import enhance_waveform
    from adaptive_exit.speech.models import enhancer_config
    from adaptive_exit.speech.serve import SpeechServeAdapter

    torch.manual_seed(0)
    model = DOMAIN.build_model(enhancer_config(num_stages=3, hidden=8), None).eval()
    policy = build_policy("patience:1,threshold=0.05,distance=relative")
    server = BatchingServer(model, SpeechServeAdapter(model), policy, max_batch=4, max_wait_ms=20)
    audio = SyntheticDataset(1, 0, seconds=0.6)[0]["noisy"]
    body = io.BytesIO()
    sf.write(body, audio, 16000, format="WAV", subtype="FLOAT")
    with Running(server) as url, httpx.Client(timeout=60) as client:
        with ThreadPoolExecutor(max_workers=3) as pool:
            responses = list(pool.map(lambda _: client.post(url + "/enhance", content=body.getvalue(),
                                                            headers={"content-type": "audio/wav"}), range(3)))
        bad = client.post(url + "/enhance", content=b"RIFF....nonsense", headers={"content-type": "audio/wav"})
    expected, _ = enhance_waveform(EarlyExitRunner(model, policy), audio)
    for response in responses:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        assert response.headers["x-num-stages"] == "3" and 1 <= int(response.headers["x-stages-used"]) <= 3
        got, sr = sf.read(io.BytesIO(response.content), dtype="float32")
        assert sr == 16000 and len(got) == len(audio)
        assert np.abs(got - expected).max() < 1e-4
    assert bad.status_code == 400 and "not a readable audio file" in bad.json()["error"]


def test_controller_moves_down_under_load_and_back_when_idle():
    levels = [Level("full", build_policy("full"), 1.0), Level("mean:0.5", build_policy("patience:1"), 0.5),
              Level("mean:0.3", build_policy("budget:2"), 0.3)]
    controller = LatencyController(levels, target_ms=50, cooldown_s=0.0, idle_s=0.05, up_cooldown_s=0.0)
    for _ in range(10):
        controller.record(80.0)  # over target: one level down per full window
    assert controller.level.name == "mean:0.5"
    for _ in range(10):
        controller.record(90.0)
    assert controller.level.name == "mean:0.3"
    for _ in range(200):  # far under target: once the slow requests leave the p95 window, one level back up
        controller.record(10.0)
        if controller.level.name != "mean:0.3":
            break
    assert controller.level.name == "mean:0.5"
    time.sleep(0.1)
    controller.tick()  # idle: full quality
    assert controller.level.name == "full"


def test_controller_reacts_to_a_queue_before_latencies_arrive_and_holds_before_going_back():
    levels = [Level("full", build_policy("full"), 1.0), Level("mean:0.5", build_policy("patience:1"), 0.5)]
    controller = LatencyController(levels, target_ms=100, cooldown_s=0.0, up_cooldown_s=60.0)
    controller.queue_wait(70.0)  # under 80% of the target: no move
    assert controller.level.name == "full"
    controller.queue_wait(85.0)  # the oldest queued request has used over 80% of the target
    assert controller.level.name == "mean:0.5"
    for _ in range(20):
        controller.record(5.0)  # far under target, but too soon after the move to go back
    assert controller.level.name == "mean:0.5"


def test_budget_levels_come_from_the_calibrated_table():
    from adaptive_exit.budgets import BudgetTable

    table = BudgetTable({"mean:0.3": "entropy:0.6", "mean:0.7": "entropy:0.1", "p95:20ms": "patience:1"})
    names = [lv.name for lv in budget_levels(table, build_policy("patience:2"))]
    assert names == ["full", "mean:0.7", "mean:0.3"]
    fallback = budget_levels(BudgetTable(), build_policy("patience:2"))
    assert [lv.policy.spec() for lv in fallback][1] == "patience:2 | budget:max_fraction=0.7"
