"""Sweeps, benchmarks and the memory report: ``python -m experiments.NAME`` from the repository
root (or with the root on ``PYTHONPATH``).

A package, so that the scripts import one another as ``from experiments import ...``; it is
not installed with ``segformer_jax`` (``pip install -e ".[experiments]"`` adds what the plots
need). The sweep files (``variants_quickstart.py``, ``ade20k_full.py``) are data, read by
``experiments.sweep_file`` from their path, not imported. See experiments/README.md.
"""
