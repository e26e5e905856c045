"""Tests of the ``tenure`` command line (file backend, real subprocesses)."""
