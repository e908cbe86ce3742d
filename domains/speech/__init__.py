"""adaptive_exit.speech: progressive speech enhancement that exits when successive stages converge.

Names are imported on first use, so a command's ``--help`` stays light.
"""
from __future__ import annotations

from adaptive_exit.lazy import lazy_exports

_EXPORTS = {
    "data": ["MixtureDataset", "PairedFolder", "SpeechCollator", "SyntheticDataset", "synthetic_speech"],
    "enhance": ["enhance_waveform"],
    "metrics": ["score", "si_sdr"],
    "models": ["EnhancerConfig", "ProgressiveEnhancer", "build_enhancer", "enhancer_config"],
    "stft": ["STFT"],
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
