"""Streaming: chunk-by-chunk enhancement equals offline at full depth, whatever the piece
sizes; chunk-level exits; any sample rate; long files in bounded memory; channel augmentation."""
import json
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from adaptive_exit.app.cli import main
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.speech.channel import ChannelAugment, lowpass, mu_law, room_impulse_response
from adaptive_exit.speech.data import SyntheticDataset
from adaptive_exit.speech.domain import DOMAIN
from adaptive_exit.speech.enhance import enhance_recording, enhance_waveform
from adaptive_exit.speech.models import enhancer_config
from adaptive_exit.speech.streaming import RateBridge, StreamingEnhancer, enhance_stream

RELATIVE = "patience:1,threshold={},distance=relative"


def dual_path(seed=0, stages=4):
    torch.manual_seed(seed)
    model = DOMAIN.build_model(enhancer_config(num_stages=stages, hidden=8), None)
    with torch.no_grad():  # random stages that differ, so the convergence rule has work to do
        for head in model.heads:
            head.refine[-1].weight.mul_(20)
    return model.eval()


def push_all(enhancer, audio, sizes):
    out, pos, i = [], 0, 0
    while pos < len(audio):
        n = sizes[i % len(sizes)]
        out.append(enhancer.push(audio[pos:pos + n]))
        pos, i = pos + n, i + 1
    out.append(enhancer.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("sizes", [[10**6], [160], [1000, 7, 333, 5003], [161, 1]])
def test_streaming_at_full_depth_equals_offline(sizes):
    model = dual_path()
    audio = SyntheticDataset(1, 3, seconds=1.3)[0]["noisy"][:20837]
    offline, _ = enhance_waveform(EarlyExitRunner(model, "full"), audio)
    enhancer = StreamingEnhancer(model, "full", chunk_ms=40)
    streamed = push_all(enhancer, audio, sizes)
    assert len(streamed) == len(audio)
    assert np.abs(streamed - offline).max() <= 1e-5 * max(1.0, np.abs(offline).max())
    assert enhancer.stats.mean_stages == model.num_stages
    assert sum(c.frames for c in enhancer.stats.chunks) == model.stft.frames(len(audio))


def test_output_is_returned_as_soon_as_it_is_final():
    model = dual_path()
    enhancer = StreamingEnhancer(model, "full", chunk_ms=20)
    audio = SyntheticDataset(1, 0, seconds=1.0)[0]["noisy"]
    returned = [len(enhancer.push(audio[i:i + 320])) for i in range(0, 16000, 320)]
    # after the first chunk fills, every 20 ms in gives about 20 ms out: the lag stays bounded
    lag = np.arange(320, 16001, 320) - np.cumsum(returned)
    assert lag.max() <= 320 + 2 * 320 + 160 and lag[-1] <= 320 + 2 * 320 + 160


def test_chunk_level_exits_follow_the_policy_and_the_budget():
    model = dual_path()
    audio = SyntheticDataset(1, 1, seconds=2.0)[0]["noisy"]
    loose = StreamingEnhancer(model, RELATIVE.format(10.0), chunk_ms=40)  # everything converges at once
    push_all(loose, audio, [4000])
    assert loose.stats.mean_stages == 2  # patience 1: the earliest exit compares stage 2 with stage 1
    capped = StreamingEnhancer(model, "full", chunk_ms=40)
    capped.push(audio[:16000])
    capped.policy = "budget:max_stages=1"  # a new budget between pushes takes effect from the next chunk
    capped.push(audio[16000:])
    capped.flush()
    stages = [c.stages for c in capped.stats.chunks]
    assert stages[0] == 4 and stages[-1] == 1
    with pytest.raises(ValueError, match="dual-path"):
        StreamingEnhancer(DOMAIN.build_model(enhancer_config(architecture="stage-recurrent", num_stages=2, hidden=8), None))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_comes_back_at_its_rate_and_length(rate):
    import librosa

    model = dual_path()
    speech = SyntheticDataset(1, 2, seconds=1.1)[0]["noisy"]
    audio = librosa.resample(speech, orig_sr=16000, target_sr=rate).astype(np.float32)
    offline, _ = enhance_recording(EarlyExitRunner(model, "full"), audio, rate)
    streamed = np.concatenate(list(enhance_stream(model, np.array_split(audio, 7), rate)))
    assert len(offline) == len(streamed) == len(audio)
    assert np.corrcoef(offline, streamed)[0, 1] > 0.99  # resampled in one go vs. in a stream: same signal


def test_high_band_is_kept_scaled_or_dropped():
    """Above 8 kHz: "keep" returns the original's high band scaled by the model's top-band
    gain (an identity model keeps it whole), "drop" returns nothing there."""
    model = dual_path()
    rate, n = 48000, 48000
    t = np.arange(n) / rate
    audio = (0.1 * np.sin(2 * np.pi * 1000 * t) + 0.1 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)

    def band_power(x, lo, hi):
        spec = np.abs(np.fft.rfft(x[4800:-4800])) ** 2
        freqs = np.fft.rfftfreq(len(x) - 9600, 1 / rate)
        return spec[(freqs > lo) & (freqs < hi)].sum()

    identity = dual_path()
    with torch.no_grad():  # mask = tanh(large) ~ 1 on the real part: the noisy spectrum comes back
        for head in identity.heads:
            head.refine[-1].weight.zero_()
            head.refine[-1].bias.copy_(torch.tensor([20.0, 0.0]))
    kept, _ = enhance_recording(EarlyExitRunner(identity, "full"), audio, rate, "keep")
    assert band_power(kept, 11000, 13000) == pytest.approx(band_power(audio, 11000, 13000), rel=0.05)
    dropped, _ = enhance_recording(EarlyExitRunner(model, "full"), audio, rate, "drop")
    assert band_power(dropped, 11000, 13000) < 1e-4 * band_power(audio, 11000, 13000)
    bridge = RateBridge(identity, rate, "full", high_band="keep")
    streamed = np.concatenate([bridge.push(audio[:20000]), bridge.push(audio[20000:]), bridge.flush()])
    assert band_power(streamed, 11000, 13000) == pytest.approx(band_power(audio, 11000, 13000), rel=0.05)


def test_enhance_streams_long_files_and_reports_chunks(tmp_path, capsys):
    model = dual_path()
    DOMAIN.save_model(model, tmp_path / "model", RELATIVE.format(0.05))
    inputs = tmp_path / "in"
    inputs.mkdir()
    speech = SyntheticDataset(1, 0, seconds=3.0)[0]["noisy"]
    sf.write(inputs / "long.wav", speech, 16000)
    sf.write(inputs / "short44.wav", speech[:16000], 44100)
    args = ["enhance", "--model", str(tmp_path / "model"), "--input", str(inputs), "--output", str(tmp_path / "out"),
            "--max-offline-seconds", "2"]
    assert main(args) == 0
    records = {json.loads(l)["input"].split("/")[-1]: json.loads(l) for l in capsys.readouterr().out.splitlines()}
    assert records["long.wav"]["mode"] == "stream" and records["short44.wav"]["mode"] == "offline"
    out, sr = sf.read(records["long.wav"]["output"], dtype="float32")
    assert sr == 16000 and len(out) == len(speech)
    written, _ = sf.read(inputs / "long.wav", dtype="float32")  # the 16-bit input as the command reads it
    offline, _ = enhance_waveform(EarlyExitRunner(model, "full"), written)
    streamed = StreamingEnhancer(model, RELATIVE.format(0.05))
    expected = push_all(streamed, written, [32000])
    assert np.abs(out - expected).max() < 1e-4  # written as 16-bit: within one step of quantisation
    assert records["long.wav"]["stages_used"] == pytest.approx(streamed.stats.mean_stages, abs=0.005)
    assert not np.allclose(expected, offline, atol=1e-3) or streamed.stats.mean_stages == 4
    assert main(args + ["--stream", "--overwrite"]) == 0
    records = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {r["mode"] for r in records} == {"stream"}
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*"))


def test_stream_reports_bad_samples_with_their_position(tmp_path):
    from adaptive_exit.speech.streaming import stream_file

    audio = np.zeros(48000, dtype=np.float32)
    audio[40000] = np.nan
    sf.write(tmp_path / "bad.wav", audio, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="from sample 32000"):
        stream_file(dual_path(), tmp_path / "bad.wav", tmp_path / "out.wav", block_seconds=1.0)
    assert not (tmp_path / "out.wav").exists()


def test_channel_augmentation_keeps_the_target_honest():
    rng = random.Random(0)
    rir = room_impulse_response(rng)
    assert rir[0] == 1.0 and np.all(np.isfinite(rir)) and 0.15 * 16000 < len(rir) < 0.92 * 16000
    x = np.random.default_rng(0).standard_normal(32000)
    narrow = lowpass(x, 3500)
    spectrum = np.abs(np.fft.rfft(narrow)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert spectrum[freqs > 4500].sum() < 1e-4 * spectrum[freqs < 3000].sum()
    coded = mu_law(x.astype(np.float32) * 0.1)
    assert len(coded) == len(x) and np.corrcoef(coded, lowpass(x, 3900) * 0.1)[0, 1] > 0.9
    channel = ChannelAugment(reverb_prob=1.0, bandlimit_prob=1.0, codec_prob=1.0)
    clean = channel.speech(x, random.Random(1))
    assert np.mean(clean**2) == pytest.approx(np.mean(x**2))
    target, noisy = channel.channel(clean, clean + 0.1 * np.random.default_rng(1).standard_normal(len(x)), random.Random(2))
    tail = lambda s: (np.abs(np.fft.rfft(s)) ** 2)[freqs > 7200].sum()  # noqa: E731
    assert tail(target) < 1e-3 * tail(clean)  # the target is band-limited with the input: no invented high band
    with pytest.raises(ValueError, match="reverb_prob"):
        ChannelAugment(reverb_prob=1.5)
