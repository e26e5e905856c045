"""Safety under faults: a fenced resource, a history checker, a nemesis, and their runs.

Modules:

* :mod:`tests.faults.resource`: the resource the lock protects: a file-backed set guarded by its
  own ``fcntl.flock`` (independent of tenure), in two twins: **fenced** (refuses a token below the
  highest it has seen; an rwlock reader's read only below the highest writer's) and **unfenced**
  (accepts everything). Each records every operation in a history file. A semaphore's resource is
  a pool of occupants (no single fence applies to N concurrent holders: why, in its docstring).
* :mod:`tests.faults.history`: the checker, pure functions over recorded events: overlapping
  critical sections (for an rwlock, those with a writer), stale writes and stale reads accepted,
  lost updates, grants in an expired session, ``lost`` firing after the next conflicting grant,
  permits held over a semaphore's limit, duplicate tokens; and per-fault measurements (lost
  detection, takeover).
* :mod:`tests.faults.worker`: the client process (Jepsen-style lock-set workload; an rwlock's
  writers and readers; a semaphore's permit holders).
* :mod:`tests.faults.nemesis`: a bounded run with several client processes and one fault class.
* :mod:`tests.faults.__main__`: the long tier (``python -m tests.faults``), which also writes the
  table in ``docs/safety.md``.

The CI tier is ``tests/faults/test_*.py`` (``pytest -m faults``): the checker on hand-made
histories, one bounded run per backend and fault class, and races forced at the exact point.
"""
