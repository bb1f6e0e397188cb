"""The software-emulated PCM chip (ground truth for everything else)."""
from .chip import EmulatedChip
from .profile import Profile, preset, preset_names, random_profile, resolve

__all__ = ["EmulatedChip", "Profile", "preset", "preset_names", "random_profile", "resolve"]
