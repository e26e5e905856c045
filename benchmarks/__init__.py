"""tenure's benchmark suite: floors, uncontended and contended locks, rwlocks and semaphores,
peers, in one run.

Run from the repository root (so the ``tests.servers`` harness is importable)::

    .venv/bin/python -m benchmarks --quick     # smoke: 1 round, 2 s runs, ~7 minutes
    .venv/bin/python -m benchmarks             # full: 3 rounds, about 40 minutes
    .venv/bin/python -m benchmarks --primitives --quick   # only the rwlock/semaphore rows

Method and results: docs/benchmarks.md; output in benchmarks/results/.
"""
