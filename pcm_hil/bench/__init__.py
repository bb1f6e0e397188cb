"""The instrument bench: the chip interface over the controller board, SMU and pulse
generator (``BenchChip``), and the bench file that describes them (``BenchConfig``)."""
from .chip import BenchChip, GaveUp, RetryPolicy
from .config import BenchConfig

__all__ = ["BenchChip", "BenchConfig", "GaveUp", "RetryPolicy"]
