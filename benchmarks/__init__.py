"""tenure's benchmark suite: floors, uncontended and contended locks, peers, in one run.

Run from the repository root (so the ``tests.servers`` harness is importable)::

    .venv/bin/python -m benchmarks --quick     # CI smoke, under 3 minutes
    .venv/bin/python -m benchmarks             # full: 3 rounds, under 20 minutes

Method and results: docs/benchmarks.md; output in benchmarks/results/.
"""
