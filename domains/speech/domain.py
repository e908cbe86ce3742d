"""The speech domain for recipes: progressive enhancement, stage-weighted spectral loss, PESQ/STOI/SI-SDR."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from adaptive_exit import io
from adaptive_exit.domain import Domain
from adaptive_exit.losses import MultiExitObjective
from adaptive_exit.policies import relative_distance

from .audio import list_audio
from .data import MixtureDataset, PairedFolder, SpeechCollator, SyntheticDataset
from .metrics import score
from .model import EnhancerConfig, ProgressiveEnhancer
from .stft import STFT

logger = logging.getLogger(__name__)

QUALITY_METRICS = ("pesq", "stoi", "estoi", "si_sdr")


@dataclass
class SpeechModelConfig:
    num_stages: int = 6
    hidden: int = 128
    time_kernel: int = 3
    dilations: list = field(default_factory=lambda: [1, 2, 4])
    shared: bool = True
    causal: bool = False
    output: str = "masked-mapping"  # masked-mapping (bounded complex mask on the noisy + residual) | refine (on the previous estimate) | mapping
    compress: float = 0.5
    loss_alpha: float = 0.5  # alpha * complex + (1 - alpha) * magnitude, on compressed spectra
    si_sdr_weight: float = 0.0  # optional SI-SDR term on the waveform of every stage
    change_weight: float = 0.0  # penalty on each stage's relative change of the previous estimate (convergence regularizer)
    target_snr_step_db: float = 0.0  # progressive learning: stage q < last trains towards clean + noise attenuated by q * step dB; 0 = clean for every stage

    def enhancer(self) -> EnhancerConfig:
        return EnhancerConfig(num_stages=self.num_stages, hidden=self.hidden, time_kernel=self.time_kernel,
                              dilations=tuple(self.dilations), shared=self.shared, causal=self.causal,
                              output=self.output)


@dataclass
class SpeechDataConfig:
    source: str = "synthetic"  # synthetic | mix (clean + noise folders) | paired (noisy/ + clean/)
    data_dir: str | None = None  # root for relative folders; default $ADAPTIVE_EXIT_DATA or ../shared/data
    clean_dirs: list = field(default_factory=lambda: ["clean_speech"])
    noise_dirs: list = field(default_factory=lambda: ["noise_clips"])
    paired_dir: str | None = None  # evaluation pairs ("test" split), e.g. voicebank_demand_16k
    train_size: int = 2000
    dev_size: int = 64
    seconds: float = 3.0
    snr_low: float = -5.0
    snr_high: float = 15.0
    heldout_files: float = 0.1  # fraction of clean files kept out of training for the dev mixtures
    babble_prob: float = 0.0  # training mixtures only: chance the noise is babble from 3-6 other training talkers
    noise_eq: bool = False  # training mixtures only: random first-order spectral tilt of the noise
    synth_noise_prob: float = 0.0  # training mixtures only: chance the noise is procedurally generated (noise_synth.py)
    heldout_noises: list = field(default_factory=list)  # noise file names kept out of training; the dev mixtures use only these (validation on unseen noise)


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
    model_config = SpeechModelConfig
    data_config = SpeechDataConfig

    # -- model
    def build_model(self, model_cfg: SpeechModelConfig, data_cfg: SpeechDataConfig) -> nn.Module:
        model = ProgressiveEnhancer(model_cfg.enhancer())
        model.speech_config = model_cfg
        return model

    def save_model(self, model: nn.Module, path: str | Path, default_policy: str) -> None:
        io.save_model_folder(path, model, {"domain": self.name, "model": asdict(model.speech_config), "default_policy": default_policy})

    def load_model(self, path: str | Path) -> tuple[nn.Module, str]:
        return load_speech_model(path)

    def set_default_policy(self, path: str | Path, policy: str) -> None:
        io.update_json(Path(path) / "config.json", default_policy=policy)

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
                   "synth_noise_prob": data_cfg.synth_noise_prob} if split == "train" else {}
        return MixtureDataset(files, noise, size, split_seed, data_cfg.seconds, snr, **augment)

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        cfg = model.speech_config
        stft = STFT(compress=cfg.compress)
        batch = SpeechCollator(stft)(samples)
        batch["compress"] = cfg.compress
        if cfg.target_snr_step_db and "clean_wav" in batch:
            batch["stage_targets"] = intermediate_targets(batch, stft, cfg.num_stages, cfg.target_snr_step_db)
        return batch

    # -- training / evaluation
    def objective(self, train_cfg, model: nn.Module | None = None):
        cfg = model.speech_config if model is not None else SpeechModelConfig()
        loss = SpectralLoss(cfg.loss_alpha, cfg.si_sdr_weight, cfg.compress)
        return ConvergentObjective(loss, train_cfg.scheme, train_cfg.exit_weights, train_cfg.distill_temperature,
                                   exit_batch=stage_target_batch, change_weight=cfg.change_weight)

    def task_loss(self, output: Tensor, batch: Any) -> Tensor:
        return SpectralLoss()(output, batch)

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

    def batch_size_of(self, batch: Any) -> int:
        return batch["noisy_spec"].shape[0]

    def input_sizes(self, batch: Any) -> Tensor:
        return batch["frames"]

    def durations(self, batch: Any) -> Tensor:
        return batch["lengths"].double() / 16000

    def report_extras(self, samples: Sequence[Any]) -> dict[str, Any]:
        """The noisy input's scores on the evaluation split (the baseline to beat)."""
        rows = [score(item["clean"], item["noisy"], metrics=QUALITY_METRICS) for item in samples]
        noisy = {m: float(np.nanmean([r[m] for r in rows])) for m in QUALITY_METRICS}
        failed = {m: int(sum(math.isnan(r[m]) for r in rows)) for m in QUALITY_METRICS}
        seconds = float(sum(len(item["noisy"]) for item in samples)) / 16000
        return {"noisy_input": noisy, "unscored_utterances": failed, "num_utterances": len(rows), "audio_seconds": seconds}


def intermediate_targets(batch: dict[str, Any], stft: STFT, num_stages: int, step_db: float) -> list[dict[str, Any]]:
    """Progressive-learning targets (as PL-CRN): stage q (1-based) of Q learns
    clean + (noisy - clean) * 10^(-q * step_db / 20), a mixture q * step_db dB cleaner
    than the input; stage Q learns the clean speech. Each entry replaces the batch's
    ``clean_spec`` / ``clean_wav`` for that stage's loss."""
    if step_db < 0:
        raise ValueError(f"model.target_snr_step_db must be >= 0, got {step_db}")
    targets = []
    for q in range(1, num_stages):
        gain = 10 ** (-q * step_db / 20)
        wavs = [c + gain * (n - c) for c, n in zip(batch["clean_wav"], batch["noisy_wav"])]
        targets.append({"clean_spec": stft.batch(wavs)[0], "clean_wav": wavs})
    targets.append({"clean_spec": batch["clean_spec"], "clean_wav": batch["clean_wav"]})
    return targets


def stage_target_batch(batch: dict[str, Any], k: int, num_exits: int) -> dict[str, Any]:
    """The batch exit k (0-based) is scored against: its intermediate target when the
    collator made them, otherwise the clean speech."""
    if "stage_targets" not in batch:
        return batch
    return {**batch, **batch["stage_targets"][k]}


class ConvergentObjective(MultiExitObjective):
    """The multi-exit spectral objective plus ``change_weight`` times the mean relative
    change each stage makes to the previous (detached) estimate, ||S_q - S_q-1||^2 /
    ||S_q-1||^2 over each utterance's own frames: the exit rule's own distance. A stage
    then changes an estimate only where the change pays for itself in the loss, so
    successive outputs converge where later stages have little to add."""

    def __init__(self, *args, change_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if change_weight < 0:
            raise ValueError(f"model.change_weight must be >= 0, got {change_weight}")
        self.change_weight = change_weight

    def __call__(self, outputs: Sequence[Tensor], batch: Any, phase: int = 1) -> Tensor:
        loss = super().__call__(outputs, batch, phase)
        if not self.change_weight or len(outputs) < 2 or (self.scheme != "joint" and phase == 1):
            return loss
        changes = torch.stack([relative_distance(prev.detach(), cur) for prev, cur in zip(outputs[:-1], outputs[1:])])
        changes = torch.where(torch.isfinite(changes), changes, torch.zeros_like(changes))  # a silent estimate has no relative change
        return loss + self.change_weight * changes.mean().to(loss.dtype)


class SpectralLoss:
    """alpha * complex MSE + (1 - alpha) * magnitude MSE over real frames of compressed
    spectra, minus an optional SI-SDR term (dB / 100) on the waveform."""

    def __init__(self, alpha: float = 0.5, si_sdr_weight: float = 0.0, compress: float = 0.5):
        if not 0 <= alpha <= 1:
            raise ValueError(f"loss_alpha must be in [0, 1], got {alpha}")
        self.alpha, self.si_sdr_weight, self.compress = alpha, si_sdr_weight, compress

    def __call__(self, output: Tensor, batch: Any) -> Tensor:
        target = batch["clean_spec"]
        mask = _frame_mask(batch["frames"], output.shape[-1], output.device)
        bins = mask.sum() * output.shape[2]
        complex_err = ((output - target) ** 2 * mask).sum() / (2 * bins)
        magnitude = lambda s: torch.sqrt(s[:, 0] ** 2 + s[:, 1] ** 2 + 1e-8)  # noqa: E731
        magnitude_err = ((magnitude(output) - magnitude(target)) ** 2 * mask[:, 0]).sum() / bins
        loss = self.alpha * complex_err + (1 - self.alpha) * magnitude_err
        if self.si_sdr_weight:
            loss = loss - self.si_sdr_weight * _batch_si_sdr(output, batch, self.compress) / 100.0
        return loss


def _frame_mask(frames: Tensor, total: int, device) -> Tensor:
    mask = torch.arange(total, device=device)[None, :] < frames.to(device)[:, None]
    return mask[:, None, None, :].float()


def _batch_si_sdr(output: Tensor, batch: Any, compress: float) -> Tensor:
    stft = STFT(compress=compress)
    values = []
    for i in range(output.shape[0]):
        frames, length = int(batch["frames"][i]), int(batch["lengths"][i])
        est = stft.waveform(output[i, ..., :frames], length)
        ref = batch["clean_wav"][i].to(est.device)
        ref, est = ref - ref.mean(), est - est.mean()
        target = (est @ ref) / (ref @ ref + 1e-8) * ref
        values.append(10 * torch.log10((target @ target + 1e-8) / ((est - target) @ (est - target) + 1e-8)))
    return torch.stack(values).mean()


def load_speech_model(path: str | Path) -> tuple[ProgressiveEnhancer, str]:
    meta, weights = io.read_model_folder(path)
    try:
        cfg = SpeechModelConfig(**{"output": "mapping", **meta["model"]})  # folders saved before `output` existed
        model = ProgressiveEnhancer(cfg.enhancer())
        model.load_state_dict(weights)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot load speech model from {path}: {exc}") from exc
    model.speech_config = cfg
    return model.eval(), meta.get("default_policy", "full")


DOMAIN = SpeechDomain()
