"""Calibration: measurement DataFrames in, fitted cell noise model out (imports nothing of pcm_hil)."""
from .model import NoiseModel
from .parts import Drift, Faults, Programming, ReadNoise, Window, fit_drift, fit_faults, fit_programming, \
    fit_read_noise, fit_window

__all__ = ["NoiseModel", "Window", "Programming", "ReadNoise", "Drift", "Faults",
           "fit_window", "fit_programming", "fit_read_noise", "fit_drift", "fit_faults"]
