"""The speech domain for recipes: progressive enhancement, stage-weighted spectral loss, PESQ/STOI/SI-SDR."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from adaptive_exit.app.domain import Domain
from adaptive_exit.fields import bounded
from adaptive_exit.evaluation.metrics import Metric, register_metric
from adaptive_exit.policies import ExitPolicy, build_policy

from .audio import SAMPLE_RATE, list_audio
from .channel import ChannelAugment
from .data import MixtureDataset, PairedFolder, SpeechCollator, SyntheticDataset
from .losses import ConvergentObjective, SpectralLoss, intermediate_targets, stage_target_batch
from .metrics import score
from .models import EnhancerConfig, architectures, build_enhancer, config_class, network_settings
from .stft import STFT

logger = logging.getLogger(__name__)

QUALITY_METRICS = ("pesq", "stoi", "estoi", "si_sdr")
_DESCRIPTIONS = {"pesq": "wide-band PESQ (ITU-T P.862.2)", "stoi": "short-time objective intelligibility",
                 "estoi": "extended STOI", "si_sdr": "scale-invariant signal-to-distortion ratio, dB"}
_BOUNDS = {"pesq": (1.0, 4.64), "stoi": (0.0, 1.0), "estoi": (0.0, 1.0)}  # SI-SDR has no range
for _name in QUALITY_METRICS:  # computed per utterance and stage into the trace (SpeechDomain.quality)
    register_metric(Metric(_name, stored=True, description=_DESCRIPTIONS[_name], bounds=_BOUNDS.get(_name)))


@dataclass
class SpeechDataConfig:
    source: str = "synthetic"  # synthetic | mix (clean + noise folders) | paired (noisy/ + clean/)
    data_dir: str | None = None  # root for relative folders; default $ADAPTIVE_EXIT_DATA or ../shared/data
    clean_dirs: list = field(default_factory=lambda: ["clean_speech"])
    noise_dirs: list = field(default_factory=lambda: ["noise_clips"])
    paired_dir: str | None = None  # evaluation pairs ("test" split), e.g. voicebank_demand_16k
    train_size: int = bounded(2000, ge=1)
    dev_size: int = bounded(64, ge=1)
    seconds: float = bounded(3.0, gt=0)
    snr_low: float = -5.0
    snr_high: float = 15.0
    heldout_files: float = bounded(0.1, gt=0, lt=1)  # fraction of clean files kept out of training for the dev mixtures
    babble_prob: float = bounded(0.0, ge=0, le=1)  # training mixtures only: chance the noise is babble from 3-6 other training talkers
    noise_eq: bool = False  # training mixtures only: random first-order spectral tilt of the noise
    synth_noise_prob: float = bounded(0.0, ge=0, le=1)  # training mixtures only: chance the noise is procedurally generated (noise_synth.py)
    reverb_prob: float = bounded(0.0, ge=0, le=1)  # training mixtures only: speech through a generated room (channel.py)
    bandlimit_prob: float = bounded(0.0, ge=0, le=1)  # training mixtures only: speech and noise low-passed (telephone / low-rate capture)
    codec_prob: float = bounded(0.0, ge=0, le=1)  # of the narrow-band mixtures: mu-law coded at 8 kHz
    heldout_noises: list = field(default_factory=list)  # noise file names kept out of training; the dev mixtures use only these (validation on unseen noise)

    def __post_init__(self) -> None:
        if self.snr_low > self.snr_high:
            raise ValueError(f"data.snr_low ({self.snr_low}) must be <= data.snr_high ({self.snr_high})")
        if self.babble_prob + self.synth_noise_prob > 1:
            raise ValueError(f"data.babble_prob + data.synth_noise_prob must be <= 1, got {self.babble_prob + self.synth_noise_prob}")


def split_noises(noise: list[Path], heldout: Sequence[str], split: str) -> list[Path]:
    """Training mixtures get the noise files not named in ``heldout`` (file names, with or
    without suffix); dev mixtures only the held-out ones, so validation measures noise the
    model never heard. Without ``heldout`` both use every file."""
    if not heldout:
        return noise
    names = {str(h) for h in heldout}
    held = [f for f in noise if f.name in names or f.stem in names]
    found = {f.name for f in held} | {f.stem for f in held}
    missing = sorted(names - found)
    if missing:
        raise ValueError(f"data.heldout_noises: no noise file named {missing} in the noise folders "
                         f"(files: {sorted(f.name for f in noise)})")
    kept = [f for f in noise if f not in held]
    if not kept:
        raise ValueError("data.heldout_noises holds out every noise file: nothing is left to train on")
    return kept if split == "train" else held


def data_root(cfg: SpeechDataConfig) -> Path:
    return Path(cfg.data_dir or os.environ.get("ADAPTIVE_EXIT_DATA", str(Path("..") / "shared" / "data")))


class SpeechDomain(Domain):
    name = "speech"
    model_config = EnhancerConfig
    data_config = SpeechDataConfig
    def build_model(self, model_cfg: EnhancerConfig, data_cfg: Any) -> nn.Module:
        """The model a recipe describes; when training (``data_cfg`` given) with
        ``model.init_from``, it starts from that saved model's weights (a continuation).
        Loading a saved model (``data_cfg`` None) never follows ``init_from``: it is a record."""
        model = build_enhancer(model_cfg)
        if model_cfg.init_from and data_cfg is not None:
            saved, _ = self.load_model(model_cfg.init_from)
            ours, theirs = network_settings(model_cfg), network_settings(saved.config)
            different = sorted(k for k in ours if ours[k] != theirs.get(k))
            if different:
                raise ValueError(f"model.init_from {model_cfg.init_from}: its model differs in {different} "
                                 f"({', '.join(f'{k}={theirs.get(k)!r}' for k in different)})")
            model.load_state_dict(saved.state_dict())
            logger.info("model weights from %s", model_cfg.init_from)
        return model

    def parse_model_config(self, raw: dict, source: str = "") -> EnhancerConfig:
        """The config class of ``raw["architecture"]`` (default dual-path) with its own keys."""
        from adaptive_exit.app.config import ConfigError, from_dict

        architecture = raw.get("architecture", "dual-path")
        try:
            cls = config_class(architecture)
        except ValueError as exc:
            raise ConfigError(f"{exc}{f' in {source}' if source else ''}") from None
        return from_dict(cls, raw, "model", source)

    def upgrade_config(self, saved: dict) -> dict:
        """Folders saved before ``output`` existed used plain mapping, before ``architecture``
        the stage-recurrent model; before each architecture had its own config, every
        folder carried every architecture's keys (the ones not its own are dropped)."""
        saved = {"output": "mapping", "architecture": "stage-recurrent", **saved}
        own = {f.name for f in fields(config_class(saved["architecture"]))} if saved["architecture"] in architectures() else None
        return saved if own is None else {k: v for k, v in saved.items() if k in own}

    def export_onnx(self, model, folder, policy, source=None):
        from .export import export_speech

        return export_speech(model, Path(folder), build_policy(policy).spec(), source)

    def serve_adapter(self, model):
        from .serve import SpeechServeAdapter

        return SpeechServeAdapter(model)

    def probe_batch(self, model):
        from .data import synthetic_speech

        wavs = [torch.from_numpy(synthetic_speech(s, np.random.default_rng(7))) for s in (0.5, 0.3)]
        spec, frames = model.stft.batch(wavs)
        return {"noisy_spec": spec, "frames": frames}

    def load_exported(self, folder):
        """The exported enhancer with its STFT and sample rate, so :func:`enhance_waveform` runs it."""
        model, policy = super().load_exported(folder)
        config = self.parse_model_config(self.upgrade_config(dict(model.manifest.extra["config"])),
                                         str(Path(folder) / "manifest.json"))
        model.config, model.stft, model.sample_rate = config, STFT(compress=config.compress), model.manifest.extra["sample_rate"]
        return model, policy

    # -- data
    def load_split(self, data_cfg: SpeechDataConfig, split: str, seed: int) -> Sequence[Any]:
        snr = (data_cfg.snr_low, data_cfg.snr_high)
        if split == "test" and data_cfg.paired_dir:
            return PairedFolder(data_root(data_cfg) / data_cfg.paired_dir)
        if split not in ("train", "dev", "test"):
            raise ValueError(f"unknown speech split {split!r}; expected train, dev or test")
        size = data_cfg.train_size if split == "train" else data_cfg.dev_size
        split_seed = seed * 10 + {"train": 1, "dev": 2, "test": 3}[split]
        if data_cfg.source == "synthetic":
            return SyntheticDataset(size, split_seed, data_cfg.seconds, snr)
        if data_cfg.source == "paired":
            if not data_cfg.paired_dir:
                raise ValueError("data.source=paired needs data.paired_dir")
            return PairedFolder(data_root(data_cfg) / data_cfg.paired_dir)
        if data_cfg.source != "mix":
            raise ValueError(f"data.source must be synthetic, mix or paired, got {data_cfg.source!r}")
        root = data_root(data_cfg)
        clean = [f for d in data_cfg.clean_dirs for f in list_audio(root / d)]
        noise = split_noises([f for d in data_cfg.noise_dirs for f in list_audio(root / d)], data_cfg.heldout_noises, split)
        held = max(1, int(len(clean) * data_cfg.heldout_files))
        files = clean[:-held] if split == "train" else clean[-held:]
        augment = {"babble_prob": data_cfg.babble_prob, "noise_eq": data_cfg.noise_eq,
                   "synth_noise_prob": data_cfg.synth_noise_prob,
                   "channel": ChannelAugment(data_cfg.reverb_prob, data_cfg.bandlimit_prob, data_cfg.codec_prob)
                   } if split == "train" else {}
        return MixtureDataset(files, noise, size, split_seed, data_cfg.seconds, snr, **augment)

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        cfg = model.config
        batch = SpeechCollator(model.stft)(samples)
        batch["compress"] = cfg.compress
        if cfg.target_snr_step_db and "clean_wav" in batch:
            batch["stage_targets"] = intermediate_targets(batch, model.stft, cfg.num_stages, cfg.target_snr_step_db)
        return batch

    # -- training / evaluation
    def objective(self, train_cfg, model: nn.Module | None = None):
        cfg = model.config if model is not None else config_class("dual-path")()
        loss = SpectralLoss(cfg.loss_alpha, cfg.si_sdr_weight, cfg.compress)
        return ConvergentObjective(loss, train_cfg.scheme, train_cfg.exit_weights, train_cfg.distill_temperature,
                                   exit_batch=stage_target_batch, change_weight=cfg.change_weight,
                                   distill_weight=train_cfg.distill_weight, gradient_rescale=train_cfg.gradient_rescale)

    def task_loss(self, output: Tensor, batch: Any) -> Tensor:
        return SpectralLoss(compress=batch.get("compress", 0.5))(output, batch)

    def quality(self, outputs: Tensor, batch: Any) -> dict[str, Tensor]:
        """PESQ, STOI, ESTOI and SI-SDR of every stage's waveform for every utterance."""
        stft = STFT(compress=batch["compress"])
        b, num = outputs.shape[:2]
        result = {m: torch.full((b, num), math.nan, dtype=torch.float64) for m in QUALITY_METRICS}
        for i in range(b):
            frames, length = int(batch["frames"][i]), int(batch["lengths"][i])
            clean = batch["clean_wav"][i].numpy()
            for k in range(num):
                wav = stft.waveform(outputs[i, k, ..., :frames], length).numpy()
                for m, value in score(clean, wav, metrics=QUALITY_METRICS).items():
                    result[m][i, k] = value
        return result

    def targets(self, batch: Any) -> None:
        return None

    def input_sizes(self, batch: Any) -> Tensor:
        return batch["frames"]

    def durations(self, batch: Any) -> Tensor:
        return batch["lengths"].double() / SAMPLE_RATE

    def report_extras(self, samples: Sequence[Any]) -> dict[str, Any]:
        """The noisy input's scores on the evaluation split (the baseline to beat)."""
        rows = [score(item["clean"], item["noisy"], metrics=QUALITY_METRICS) for item in samples]
        noisy = {m: float(np.nanmean([r[m] for r in rows])) for m in QUALITY_METRICS}
        failed = {m: int(sum(math.isnan(r[m]) for r in rows)) for m in QUALITY_METRICS}
        seconds = float(sum(len(item["noisy"]) for item in samples)) / SAMPLE_RATE
        return {"noisy_input": noisy, "unscored_utterances": failed, "num_utterances": len(rows), "audio_seconds": seconds}


def load_speech_model(path: str | Path) -> tuple[nn.Module, ExitPolicy]:
    """A saved speech model (eval mode) and its default policy."""
    return DOMAIN.load_model(path)


DOMAIN = SpeechDomain()
