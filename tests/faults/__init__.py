"""Safety under faults: a fenced resource, a history checker, a nemesis, and their runs.

Modules:

* :mod:`tests.faults.resource`: the resource the lock protects: a file-backed set guarded by its
  own ``fcntl.flock`` (independent of tenure), in two twins: **fenced** (refuses a token below the
  highest it has seen) and **unfenced** (accepts everything). Each records every operation in a
  history file.
* :mod:`tests.faults.history`: the checker, pure functions over recorded events: overlapping
  critical sections, stale writes accepted, lost updates, grants in an expired session, ``lost``
  firing after the next holder's grant; and per-fault measurements (lost detection, takeover).
* :mod:`tests.faults.worker`: the client process (Jepsen-style lock-set workload).
* :mod:`tests.faults.nemesis`: a bounded run with several client processes and one fault class.
* :mod:`tests.faults.__main__`: the long tier (``python -m tests.faults``), which also writes the
  table in ``docs/safety.md``.

The CI tier is ``tests/faults/test_*.py`` (``pytest -m faults``): the checker on hand-made
histories, one bounded run per backend and fault class, and races forced at the exact point.
"""
