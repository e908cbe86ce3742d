"""Streaming enhancement with chunk-level early exit, at any sample rate, in bounded memory.

:class:`StreamingEnhancer` takes audio at the model rate in pieces of any size (a
microphone callback, blocks read from a file) and returns the enhanced audio as soon
as it is final. Every ``chunk_ms`` of frames it runs the causal model's stages on the
new frames only, carrying each layer's past frames across chunks (``StreamState``), and
stops after the stage at which the exit policy (the spectral-distance patience rule on
this chunk's successive estimates, under the current budget) says the output has
converged. At full depth the output equals offline enhancement of the whole recording
(the STFT with centring and reflect padding, the overlap-add and its window envelope are
reproduced sample for sample).

A stage a chunk skips gets its past frames filled from the exit stage's latent (each
stage is a residual refinement, so that is its best stand-in), so a later chunk that runs
the stage sees recent context rather than context that ended where skipping began.

:class:`RateBridge` wraps it for audio at any rate: soxr streams resample to the model
rate and back, and above the model band (8 kHz for 16 kHz models) the original signal is
kept, ``x - up(down(x))``, scaled per frame by the suppression the model applied in its
own top band (5.5-8 kHz), so wide-band recordings keep their air and sibilance where the
model kept the speech, and lose it where the model removed noise. ``high_band="drop"``
returns only the model band instead.
"""
from __future__ import annotations

from .enhancer import ChunkRecord, StreamingEnhancer, StreamStats
from .frames import OverlapAdd, StreamingSTFT
from .rate import RateBridge, enhance_stream, stream_file

__all__ = ["ChunkRecord", "OverlapAdd", "RateBridge", "StreamStats", "StreamingEnhancer", "StreamingSTFT",
           "enhance_stream", "stream_file"]
