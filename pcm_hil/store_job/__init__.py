"""The store job: a trained network into the chip and back, in stages.

``job`` orchestrates; each stage module takes only its own config:
``inputs`` (network and data) → ``compression`` → ``importance`` → ``layout`` →
``allocation`` → program-and-verify → ``readback`` → ``evaluation`` (more programmings,
the ``digital_medium`` measured on the chip) → ``baselines`` (with ``side_info``);
``prediction`` runs the read-back chain on noise-model draws; ``report`` draws the PNG.
"""
from .job import StoreConfig, StoreOutcome, load_run, prepare, resume_store_job, run_store_job

__all__ = ["StoreConfig", "StoreOutcome", "load_run", "prepare", "resume_store_job", "run_store_job"]
