"""Instrument drivers: wire protocols only, no cell semantics (imports nothing of pcm_hil)."""
