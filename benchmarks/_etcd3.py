"""python-etcd3 (``etcd3`` 0.12.0) on today's protobuf, for the benchmark only.

python-etcd3's generated modules (``etcd3/etcdrpc/{kv,auth,rpc}_pb2.py``) predate protobuf 4's
descriptor API, so ``import etcd3`` fails next to the protobuf tenure needs. Its code is fine;
only those three modules are stale. Importing this module imports python-etcd3 (``etcd3`` below;
ImportError when it is not installed): ``import_etcd3()`` first rebuilds the three in memory the
way today's ``protoc`` writes them (``AddSerializedFile`` + the builder), from the descriptors the
old files carry, and puts them in ``sys.modules``, where python-etcd3's package finds them. Nothing
on disk changes, nothing else of python-etcd3 is touched: its client, gRPC stubs and lock run as
released. (Their files, ``kv.proto`` …, and packages, ``etcdserverpb`` …, do not clash with
tenure's stubs, which live under ``tenure/_etcdpb/`` in ``tenure_*`` packages.)

Its ``Lock.acquire`` also passes tenacity an old-style ``wait(previous_attempt_number,
delay_since_first_attempt)``, which tenacity 6 still adapted and today's tenacity (tooz needs it)
calls with one ``retry_state``: ``etcd3.locks`` gets a ``tenacity`` whose ``retry`` adapts it
the same way (:func:`_retry`); everything else is tenacity itself.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Any

import tenacity

# In dependency order: rpc.proto imports kv.proto and auth.proto, which the pool must hold first.
_MODULES = ("kv", "auth", "rpc")

_TEMPLATE = """\
from google.protobuf import descriptor_pool as _descriptor_pool
from google.protobuf.internal import builder as _builder

DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile({serialized!r})
_builder.BuildMessageAndEnumDescriptors(DESCRIPTOR, globals())
_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, {name!r}, globals())
"""


def _serialized(source: str) -> bytes:
    """The ``serialized_pb`` of the old file's ``FileDescriptor(...)`` call."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "serialized_pb":
            call = node.value  # _b('...'): latin-1 text of the bytes
            if isinstance(call, ast.Call) and len(call.args) == 1:
                return str(ast.literal_eval(call.args[0])).encode("latin1")
            return bytes(ast.literal_eval(call))
    raise ImportError("python-etcd3's generated module has no serialized descriptor")


def import_etcd3() -> Any:
    """``import etcd3``, with its three stale generated modules rebuilt first."""
    if "etcd3" in sys.modules:
        return sys.modules["etcd3"]
    spec = importlib.util.find_spec("etcd3")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("python-etcd3 is not installed (pip install etcd3==0.12.0)")
    rpc_dir = Path(next(iter(spec.submodule_search_locations))) / "etcdrpc"
    for short in _MODULES:
        name = f"etcd3.etcdrpc.{short}_pb2"
        path = rpc_dir / f"{short}_pb2.py"
        code = _TEMPLATE.format(serialized=_serialized(path.read_text()), name=name)
        module = types.ModuleType(name)
        module.__file__ = str(path)
        exec(compile(code, module.__file__, "exec"), module.__dict__)
        sys.modules[name] = module  # found there when python-etcd3's package imports it
    import etcd3
    import etcd3.locks

    etcd3.locks.tenacity = types.SimpleNamespace(**{**vars(tenacity), "retry": _retry})
    return etcd3


def _retry(*args: Any, **kwargs: Any) -> Any:
    """``tenacity.retry``, taking a two-argument ``wait`` as tenacity 6 did."""
    wait = kwargs.get("wait")
    if wait is not None and len(inspect.signature(wait).parameters) == 2:
        old = wait
        kwargs["wait"] = lambda state: old(state.attempt_number, state.seconds_since_start)
    return tenacity.retry(*args, **kwargs)


etcd3 = import_etcd3()
