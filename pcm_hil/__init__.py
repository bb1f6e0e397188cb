"""pcm-hil: hardware-in-the-loop control of phase-change-memory test chips."""
from .chip import Chip, Geometry, PulseKind, SoftLimits

__version__ = "0.1.0"
__all__ = ["Chip", "Geometry", "PulseKind", "SoftLimits", "__version__"]
