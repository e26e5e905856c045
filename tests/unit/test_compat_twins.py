"""The two hand-written ``_compat`` modules (asyncio and threads) must offer the same names with
the same parameters: the generated code of each flavour calls one of them by the same names."""

from __future__ import annotations

import inspect
from typing import Any

from tenure._async import _compat as async_compat
from tenure._sync import _compat as sync_compat


def _parameters(fn: Any) -> list[tuple[str, Any]]:
    try:
        signature = inspect.signature(fn)
    except ValueError:  # a C type (threading.RLock) tells nothing: compared by name only
        return []
    return [(p.name, p.kind) for p in signature.parameters.values() if p.name != "self"]


#: Classes that only their own module constructs (``spawn`` makes a ``Worker`` from a task or a
#: thread), so their constructors differ by design.
_MADE_INSIDE = {"Worker"}


def test_both_flavours_export_the_same_names() -> None:
    assert sorted(async_compat.__all__) == sorted(sync_compat.__all__)
    for name in async_compat.__all__:
        assert hasattr(async_compat, name), name
        assert hasattr(sync_compat, name), name


def test_both_flavours_have_the_same_signatures() -> None:
    for name in async_compat.__all__:
        a, s = getattr(async_compat, name), getattr(sync_compat, name)
        if inspect.isfunction(a):
            assert _parameters(a) == _parameters(s), name
        elif inspect.isclass(a):
            # Every method the asyncio class defines, the thread one has, with the same
            # parameters (the sync class may inherit it, e.g. from threading.Event).
            for member, value in vars(a).items():
                if not callable(value) or (member.startswith("_") and member != "__init__"):
                    continue
                if member == "__init__" and name in _MADE_INSIDE:
                    continue
                assert hasattr(s, member), f"{name}.{member}"
                if _parameters(getattr(s, member)):
                    assert _parameters(value) == _parameters(getattr(s, member)), f"{name}.{member}"
