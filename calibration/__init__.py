"""Calibration: measurement DataFrames in, fitted cell noise model out (imports nothing of pcm_hil)."""
from .model import NoiseModel

__all__ = ["NoiseModel"]
