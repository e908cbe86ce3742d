"""Progressive enhancers, one module per architecture (each registers its config and model)."""
from __future__ import annotations

from .base import (TRAINING_ONLY, CausalStages, EnhancerConfig, StreamState, architectures, build_enhancer, complex_mask,
                   config_class, enhancer_config, network_settings, noisy_features)
from .dprnn import DPRNNConfig, DualPathRNNEnhancer
from .dual_path import DualPathConfig, DualPathEnhancer
from .stage_recurrent import ProgressiveEnhancer, StageRecurrentConfig

__all__ = ["CausalStages", "DPRNNConfig", "DualPathConfig", "DualPathEnhancer", "DualPathRNNEnhancer", "EnhancerConfig",
           "ProgressiveEnhancer", "StageRecurrentConfig", "StreamState", "TRAINING_ONLY", "architectures",
           "build_enhancer", "complex_mask", "config_class", "enhancer_config", "network_settings", "noisy_features"]
