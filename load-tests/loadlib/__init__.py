"""Shared helpers of the load tests and benchmarks (``load-tests/*.py`` import them).

The scripts in ``load-tests/`` run as files (``uv run load-tests/loadgen.py``); Python puts
their folder first on ``sys.path``, which makes this package importable without installing.
"""
