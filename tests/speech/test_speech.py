import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from adaptive_exit.app.cli import main
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.speech.audio import load_audio
from adaptive_exit.speech.data import MixtureDataset, PairedFolder, SpeechCollator, SyntheticDataset, mix_at_snr
from adaptive_exit.speech.domain import DOMAIN
from adaptive_exit.speech.losses import SpectralLoss
from adaptive_exit.speech.metrics import score, si_sdr
from adaptive_exit.speech.models import ProgressiveEnhancer, enhancer_config
from adaptive_exit.speech.stft import STFT
from adaptive_exit.runtime.traces import record_trace, replay
from adaptive_exit.training import TrainConfig
from tests.conftest import REPO

RELATIVE = "patience:1,threshold={},distance=relative"


@pytest.mark.parametrize("compress", [None, 0.5])
def test_stft_round_trip_is_exact(compress):
    stft = STFT(compress=compress)
    wav = torch.randn(16000 + 123) * 0.3
    spec = stft.spectrum(wav)
    assert spec.shape == (2, 161, stft.frames(len(wav)))
    torch.testing.assert_close(stft.waveform(spec, len(wav)), wav, rtol=0, atol=1e-5)


def tiny_enhancer(seed=0, architecture="stage-recurrent", **kwargs):
    torch.manual_seed(seed)
    cfg = enhancer_config(architecture=architecture, hidden=24 if architecture == "stage-recurrent" else 8,
                         num_stages=4, **kwargs)
    model = DOMAIN.build_model(cfg, None)
    # random weights barely change the estimate; scale the output layers so stages differ
    with torch.no_grad():
        for out in ([s.out for s in model.stages] if architecture == "stage-recurrent" else [h.refine[-1] for h in model.heads]):
            out.weight.mul_(20)
    return model.eval()


@pytest.mark.parametrize("architecture, shared, causal", [("stage-recurrent", True, False), ("stage-recurrent", False, True),
                                                          ("dual-path", None, None), ("dprnn", None, None)])
def test_batched_runner_equals_per_utterance_runs(architecture, shared, causal):
    own = {"shared": shared, "causal": causal} if architecture == "stage-recurrent" else {}
    model = tiny_enhancer(architecture=architecture, **own)
    items = [SyntheticDataset(3, 5, seconds=s)[i] for i, s in enumerate([0.6, 1.3, 0.9])]
    collate = SpeechCollator(STFT())
    batch = collate(items)
    for threshold in (0.01, 0.1, 1.0):
        policy = RELATIVE.format(threshold)
        batched = EarlyExitRunner(model, policy)(batch)
        for i, item in enumerate(items):
            alone = EarlyExitRunner(model, policy)(collate([item]))
            frames = int(batch["frames"][i])
            assert int(batched.exit_stage[i]) == int(alone.exit_stage[0])
            torch.testing.assert_close(batched.output[i, ..., :frames], alone.output[0], rtol=1e-3, atol=5e-4)
            assert batched.output[i, ..., frames:].abs().max() == 0 if frames < batch["noisy_spec"].shape[-1] else True
    trace = record_trace(model, [batch], progress=False)
    assert torch.equal(replay(trace, RELATIVE.format(0.1)).exit_stage, EarlyExitRunner(model, RELATIVE.format(0.1))(batch).exit_stage)


@pytest.mark.parametrize("architecture", ["stage-recurrent", "dual-path", "dprnn"])
def test_causal_model_has_no_look_ahead(architecture):
    model = tiny_enhancer(architecture=architecture, **({"causal": True} if architecture == "stage-recurrent" else {}))
    wav = torch.from_numpy(SyntheticDataset(1, 1, seconds=1.0)[0]["noisy"])
    stft = STFT()
    full, frames = stft.batch([wav])
    changed = full.clone()
    changed[..., 60:] += torch.randn_like(changed[..., 60:])
    with torch.no_grad():
        a = EarlyExitRunner(model, "full")({"noisy_spec": full, "frames": frames}).output
        b = EarlyExitRunner(model, "full")({"noisy_spec": changed, "frames": frames}).output
    torch.testing.assert_close(a[..., :60], b[..., :60])
    assert not torch.allclose(a[..., 60:], b[..., 60:])


def test_parameter_counts_are_small_by_default():
    shared = ProgressiveEnhancer(enhancer_config(architecture="stage-recurrent"))
    assert 1e5 < sum(p.numel() for p in shared.parameters()) < 1e6
    unshared = ProgressiveEnhancer(enhancer_config(architecture="stage-recurrent", shared=False))
    assert sum(p.numel() for p in unshared.parameters()) == 6 * sum(p.numel() for p in shared.parameters())


def test_spectral_loss_is_zero_for_the_clean_target_and_ignores_padding():
    items = [SyntheticDataset(2, 0, seconds=s)[i] for i, s in enumerate([0.5, 1.0])]
    batch = SpeechCollator(STFT())(items)
    loss = SpectralLoss(alpha=0.5)
    assert loss(batch["clean_spec"], batch).item() == pytest.approx(0.0, abs=1e-6)
    noisy_padding = batch["clean_spec"].clone()
    noisy_padding[0, ..., int(batch["frames"][0]):] = 5.0
    assert loss(noisy_padding, batch).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(batch["noisy_spec"], batch).item() > 0


def test_progressive_targets_get_cleaner_by_the_step_and_end_clean():
    from adaptive_exit.speech.losses import intermediate_targets, stage_target_batch

    def snr(reference, estimate):
        return 10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2))

    model = DOMAIN.build_model(enhancer_config(num_stages=4, hidden=8, target_snr_step_db=5.0), None)
    items = [SyntheticDataset(2, 0, seconds=s)[i] for i, s in enumerate([0.5, 1.0])]
    batch = DOMAIN.collate(model, items)
    targets = batch["stage_targets"]
    assert len(targets) == 4 and targets[-1]["clean_spec"] is batch["clean_spec"]
    for i, item in enumerate(items):
        clean = item["clean"].astype(np.float64)
        input_snr = snr(clean, item["noisy"].astype(np.float64))
        for q in range(3):
            assert snr(clean, targets[q]["clean_wav"][i].double().numpy()) == pytest.approx(input_snr + 5.0 * (q + 1), abs=1e-3)
    # each stage's loss is zero exactly when it hits its own target
    objective = DOMAIN.objective(TrainConfig(exit_weights="uniform"), model)
    assert objective([t["clean_spec"] for t in targets], batch).item() == pytest.approx(0.0, abs=1e-6)
    assert objective([batch["clean_spec"]] * 4, batch).item() > 0
    plain = DOMAIN.collate(DOMAIN.build_model(enhancer_config(num_stages=4, hidden=8), None), items)
    assert "stage_targets" not in plain and stage_target_batch(plain, 0, 4) is plain  # step 0: clean for every stage
    with pytest.raises(ValueError, match="target_snr_step_db"):
        intermediate_targets(batch, STFT(), 4, -1.0)


def test_change_penalty_adds_the_exit_distance_and_only_pushes_later_stages():
    from adaptive_exit.policies import relative_distance

    items = [SyntheticDataset(2, 0, seconds=s)[i] for i, s in enumerate([0.5, 1.0])]
    train_cfg = TrainConfig(exit_weights="linear")
    plain = DOMAIN.objective(train_cfg, DOMAIN.build_model(enhancer_config(num_stages=3, hidden=8), None))
    penalised = DOMAIN.objective(train_cfg, DOMAIN.build_model(enhancer_config(num_stages=3, hidden=8, change_weight=0.5), None))
    batch = SpeechCollator(STFT(compress=0.5))(items)
    outputs = [(batch["noisy_spec"] * s).requires_grad_() for s in (1.0, 0.8, 0.7)]
    changes = [relative_distance(outputs[0], outputs[1]), relative_distance(outputs[1], outputs[2])]
    expected = plain(outputs, batch) + 0.5 * torch.stack(changes).mean()
    assert penalised(outputs, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    plain_grads = torch.autograd.grad(plain(outputs, batch), outputs)
    penalised_grads = torch.autograd.grad(penalised(outputs, batch), outputs)
    torch.testing.assert_close(penalised_grads[0], plain_grads[0])  # the first estimate is not pulled towards the later ones
    assert (penalised_grads[2] - plain_grads[2]).abs().max() > 1e-4 * plain_grads[2].abs().max()
    with pytest.raises(ValueError, match="change_weight"):
        DOMAIN.objective(train_cfg, DOMAIN.build_model(enhancer_config(num_stages=3, hidden=8, change_weight=-1), None))


def test_mixing_hits_the_snr():
    rng = np.random.default_rng(0)
    clean, noise = rng.standard_normal(16000), rng.standard_normal(16000) * 3
    noisy = mix_at_snr(clean, noise, 5.0)
    scaled_noise = noisy - clean
    assert 10 * np.log10(np.mean(clean**2) / np.mean(scaled_noise**2)) == pytest.approx(5.0, abs=1e-9)


def test_datasets_are_reproducible(tmp_path):
    a, b = SyntheticDataset(4, 7), SyntheticDataset(4, 7)
    assert np.array_equal(a[2]["noisy"], b[2]["noisy"])
    assert not np.array_equal(a[2]["noisy"], SyntheticDataset(4, 8)[2]["noisy"])
    for name, sr in (("c1.wav", 16000), ("c2.wav", 16000), ("n.wav", 16000)):
        sf.write(tmp_path / name, np.random.default_rng(len(name)).standard_normal(sr * 2) * 0.1, sr)
    mix = MixtureDataset([tmp_path / "c1.wav", tmp_path / "c2.wav"], [tmp_path / "n.wav"], size=5, seed=3, seconds=1.0)
    first = mix[4]
    assert np.array_equal(first["noisy"], mix[4]["noisy"]) and len(first["noisy"]) == 16000
    assert np.abs(first["noisy"]).max() <= 0.95 + 1e-6


def test_bad_audio_inputs(tmp_path):
    stereo = np.stack([np.ones(1600) * 0.5, np.zeros(1600)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 16000)
    assert np.allclose(load_audio(tmp_path / "stereo.wav"), 0.25, atol=1e-4)  # downmixed by averaging
    sf.write(tmp_path / "low.wav", np.sin(np.arange(8000) / 8000 * 2 * np.pi * 200).astype(np.float32), 8000)
    assert len(load_audio(tmp_path / "low.wav")) == 16000  # resampled to 16 kHz
    sf.write(tmp_path / "high.wav", np.zeros(44100, dtype=np.float32), 44100)
    assert len(load_audio(tmp_path / "high.wav")) == 16000
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav: the audio is empty"):
        load_audio(tmp_path / "empty.wav")
    nan = np.zeros(1000, dtype=np.float32)
    nan[10] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav: 1 sample"):
        load_audio(tmp_path / "nan.wav")
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(ValueError, match="text.wav: not a readable audio file"):
        load_audio(tmp_path / "text.wav")


def test_metrics_flag_unscorable_signals_with_nan():
    rng = np.random.default_rng(0)
    clean = SyntheticDataset(1, 0, seconds=1.5)[0]["clean"]
    noisy = clean + 0.005 * rng.standard_normal(len(clean)).astype(np.float32)
    good = score(clean, noisy)
    assert 1.0 <= good["pesq"] <= 4.6 and 0 < good["stoi"] <= 1 and good["si_sdr"] > 5
    assert score(clean, clean)["si_sdr"] > 60
    assert all(math.isnan(v) for v in score(clean[:1000], noisy[:1000]).values())  # too short
    assert all(math.isnan(v) for v in score(np.zeros_like(clean), noisy).values())  # silent reference
    bad = noisy.copy()
    bad[5] = np.nan
    assert all(math.isnan(v) for v in score(clean, bad).values())
    assert si_sdr(clean, 2.0 * clean) > 100  # scale-invariant


def test_paired_folder_checks_twins(tmp_path):
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    sf.write(tmp_path / "noisy" / "a.wav", np.zeros(1600, dtype=np.float32) + 0.1, 16000)
    with pytest.raises(ValueError, match="without a clean twin"):
        PairedFolder(tmp_path)
    sf.write(tmp_path / "clean" / "a.wav", np.zeros(1600, dtype=np.float32) + 0.1, 16000)
    assert PairedFolder(tmp_path)[0]["name"] == "a.wav"


def test_enhance_cli_writes_same_length_and_rate(tmp_path, capsys):
    model = tiny_enhancer()
    DOMAIN.save_model(model, tmp_path / "model", RELATIVE.format(0.05))
    inputs = tmp_path / "in"
    inputs.mkdir()
    speech = SyntheticDataset(1, 0, seconds=1.0)[0]["noisy"]
    sf.write(inputs / "a16.wav", speech, 16000)
    import librosa

    sf.write(inputs / "b44.wav", librosa.resample(speech, orig_sr=16000, target_sr=44100), 44100)
    sf.write(inputs / "stereo.wav", np.stack([speech, speech], 1), 16000)
    (inputs / "broken.wav").write_bytes(b"RIFF....nonsense")
    assert main(["enhance", "--model", str(tmp_path / "model"), "--input", str(inputs), "--output", str(tmp_path / "out"), "--budget", "max:0.5"]) == 0
    captured = capsys.readouterr()
    records = {json.loads(l)["input"].split("/")[-1]: json.loads(l) for l in captured.out.splitlines()}
    assert "broken.wav" not in records  # errors go to stderr, one line each
    assert "broken.wav: " in captured.err and "not a readable audio file" in captured.err
    for name in ("a16.wav", "b44.wav", "stereo.wav"):
        rec = records[name]
        out, sr = sf.read(rec["output"])
        src = sf.info(str(inputs / name))
        assert sr == src.samplerate and len(out) == src.frames and out.ndim == 1
        assert rec["stages_used"] <= 2 and rec["compute"] <= 0.5  # the budget caps every file


@pytest.mark.slow
def test_quickstart_recipe_smoke(tmp_path):
    code = main(["run", str(REPO / "recipes/speech/quickstart/quickstart.yaml"), f"run_dir={tmp_path}", "train.max_steps=30",
                 "train.progress=false", "data.train_size=96", "data.dev_size=4", "eval.timing_repeats=1",
                 "model.hidden=32", "calibrate.budget=null"])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["extras"]["num_utterances"] == 4
    assert set(results["full_model"]) == {"pesq", "si_sdr", "stoi", "estoi"}
    assert results["timing"]["matches_trace_replay"] and results["timing"]["modes_agree"]


def test_masked_mapping_bounds_the_mask_and_checks_the_output_form():
    from adaptive_exit.speech.models import complex_mask

    spec = torch.randn(2, 2, 161, 10)
    huge = complex_mask(torch.full((2, 2, 161, 10), 1e4), spec)
    magnitude = lambda s: torch.sqrt(s[:, 0] ** 2 + s[:, 1] ** 2)  # noqa: E731
    assert bool((magnitude(huge) <= magnitude(spec) * (1 + 1e-5)).all())  # |mask| < 1: never amplifies
    assert torch.allclose(complex_mask(torch.zeros_like(spec), spec), torch.zeros_like(spec))
    with pytest.raises(ValueError, match="model.output"):
        enhancer_config(output="ratio")
    for output in ("masked-mapping", "mapping", "refine"):  # every form keep padding out of the estimate
        model = ProgressiveEnhancer(enhancer_config(architecture="stage-recurrent", num_stages=2, hidden=8, output=output))
        batch = {"noisy_spec": torch.randn(2, 2, 161, 12), "frames": torch.tensor([12, 7])}
        out = EarlyExitRunner(model, "full")(batch).output
        assert out[1, ..., 7:].abs().max() == 0


def test_noise_augmentation_is_reproducible_and_power_preserving(tmp_path):
    from adaptive_exit.speech.data import tilt

    x = np.random.default_rng(0).standard_normal(4000)
    for c in (-0.9, 0.5):
        assert np.mean(tilt(x, c) ** 2) == pytest.approx(np.mean(x**2))
    bright = np.abs(np.fft.rfft(tilt(x, 0.9)))
    assert bright[-500:].mean() > bright[:500].mean()  # c > 0 tilts energy to high frequencies
    for name in ("c1.wav", "c2.wav", "c3.wav", "n.wav"):
        sf.write(tmp_path / name, np.random.default_rng(len(name) + ord(name[1])).standard_normal(32000) * 0.1, 16000)
    clean = [tmp_path / f"c{i}.wav" for i in (1, 2, 3)]
    plain = MixtureDataset(clean, [tmp_path / "n.wav"], size=6, seed=1, seconds=1.0)
    augmented = MixtureDataset(clean, [tmp_path / "n.wav"], size=6, seed=1, seconds=1.0, babble_prob=1.0, noise_eq=True)
    again = MixtureDataset(clean, [tmp_path / "n.wav"], size=6, seed=1, seconds=1.0, babble_prob=1.0, noise_eq=True)
    assert np.array_equal(augmented[3]["noisy"], again[3]["noisy"])
    assert not np.array_equal(augmented[3]["noisy"], plain[3]["noisy"])
    with pytest.raises(ValueError, match="babble_prob"):
        MixtureDataset(clean, [tmp_path / "n.wav"], size=1, seed=1, babble_prob=2.0)


def test_model_folders_saved_before_output_forms_load_as_mapping(tmp_path):
    model = DOMAIN.build_model(enhancer_config(architecture="stage-recurrent", num_stages=2, hidden=8, output="mapping"), None)
    DOMAIN.save_model(model, tmp_path / "model", "full")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    del config["model"]["output"], config["model"]["architecture"]  # as saved before either existed
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    loaded, _ = DOMAIN.load_model(tmp_path / "model")
    assert loaded.config.output == "mapping" and loaded.config.architecture == "stage-recurrent"


def test_heldout_noises_keep_validation_noise_out_of_training(tmp_path):
    from adaptive_exit.speech.domain import SpeechDataConfig

    rng = np.random.default_rng(0)
    for folder, names in (("clean", ["a", "b", "c"]), ("noise", ["hum", "tap", "fan"])):
        (tmp_path / folder).mkdir()
        for name in names:
            sf.write(tmp_path / folder / f"{name}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    cfg = SpeechDataConfig(source="mix", data_dir=str(tmp_path), clean_dirs=["clean"], noise_dirs=["noise"],
                           train_size=4, dev_size=4, seconds=0.5, heldout_files=0.34, heldout_noises=["tap.wav", "hum"])
    train, dev = DOMAIN.load_split(cfg, "train", 0), DOMAIN.load_split(cfg, "dev", 0)
    assert [p.name for p in train.noise_files] == ["fan.wav"]
    assert sorted(p.name for p in dev.noise_files) == ["hum.wav", "tap.wav"]
    cfg.heldout_noises = ["drill"]
    with pytest.raises(ValueError, match=r"heldout_noises: no noise file named \['drill'\]"):
        DOMAIN.load_split(cfg, "train", 0)
    cfg.heldout_noises = ["hum", "tap", "fan"]
    with pytest.raises(ValueError, match="nothing is left to train on"):
        DOMAIN.load_split(cfg, "train", 0)


def test_procedural_noise_is_reproducible_varied_and_unit_level():
    from adaptive_exit.speech.noise_synth import procedural_noise

    def centroid(x):
        power = np.abs(np.fft.rfft(x)) ** 2
        return float((np.fft.rfftfreq(len(x), 1 / 16000) * power).sum() / power.sum())

    draws = [procedural_noise(16000, np.random.default_rng(seed)) for seed in range(40)]
    assert np.array_equal(draws[3], procedural_noise(16000, np.random.default_rng(3)))
    for x in draws:
        assert x.shape == (16000,) and np.all(np.isfinite(x))
        assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0)
    centroids = [centroid(x) for x in draws]
    assert min(centroids) < 1000 < 3000 < max(centroids)  # from rumble to hiss, not one colour
    levels = [np.std([np.sqrt(np.mean(frame**2)) for frame in x.reshape(-1, 320)]) for x in draws]
    assert min(levels) < 0.3 and max(levels) > 0.6  # from steady to strongly fluctuating
    with pytest.raises(ValueError, match="positive length"):
        procedural_noise(0, np.random.default_rng(0))


def test_mixtures_can_draw_procedural_noise(tmp_path):
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    sf.write(tmp_path / "tone.wav", tone.astype(np.float32), 16000)
    sf.write(tmp_path / "c.wav", (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32), 16000)
    clean = [tmp_path / "c.wav"]

    def noise_peak_share(item):  # share of the noise power in its strongest FFT bin: ~1 for a pure tone
        power = np.abs(np.fft.rfft(item["noisy"].astype(np.float64) - item["clean"])) ** 2
        return power.max() / power.sum()

    real = MixtureDataset(clean, [tmp_path / "tone.wav"], size=4, seed=2, seconds=1.0)
    synth = MixtureDataset(clean, [tmp_path / "tone.wav"], size=4, seed=2, seconds=1.0, synth_noise_prob=1.0)
    assert all(noise_peak_share(real[i]) > 0.5 for i in range(4))
    assert all(noise_peak_share(synth[i]) < 0.2 for i in range(4))
    assert np.array_equal(synth[1]["noisy"], MixtureDataset(clean, [tmp_path / "tone.wav"], size=4, seed=2, seconds=1.0, synth_noise_prob=1.0)[1]["noisy"])
    with pytest.raises(ValueError, match="synth_noise_prob must be in"):
        MixtureDataset(clean, [tmp_path / "tone.wav"], size=1, seed=1, synth_noise_prob=-0.1)
    with pytest.raises(ValueError, match="babble_prob \\+ synth_noise_prob"):
        MixtureDataset(clean, [tmp_path / "tone.wav"], size=1, seed=1, babble_prob=0.6, synth_noise_prob=0.6)
