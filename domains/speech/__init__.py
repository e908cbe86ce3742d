"""adaptive_exit.speech: progressive speech enhancement that exits when successive stages converge."""
from .data import MixtureDataset, PairedFolder, SpeechCollator, SyntheticDataset, synthetic_speech
from .enhance import enhance_waveform
from .metrics import score, si_sdr
from .model import EnhancerConfig, ProgressiveEnhancer
from .stft import STFT

__all__ = ["EnhancerConfig", "MixtureDataset", "PairedFolder", "ProgressiveEnhancer", "STFT", "SpeechCollator",
           "SyntheticDataset", "enhance_waveform", "score", "si_sdr", "synthetic_speech"]
