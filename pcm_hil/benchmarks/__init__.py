"""Benchmarks behind ``pcm-hil bench ...`` (scripts and recorded figures live in ``bench/``)."""
