#!/usr/bin/env python3
"""Regenerate tenure's etcd v3 gRPC stubs (``src/tenure/_etcdpb/``) from etcd's official protos.

    python scripts/gen-etcd-protos.py [--etcd-src DIR] [--check]

The protos come from Debian's ``golang-etcd-server-dev`` (``apt-get install -y
golang-etcd-server-dev``; default ``--etcd-src /usr/share/gocode/src/go.etcd.io/etcd``):
``etcdserver/etcdserverpb/rpc.proto``, ``mvcc/mvccpb/kv.proto``, ``auth/authpb/auth.proto``.
Only CI's regeneration check needs that package, not the tests.

What the script changes, so the output is reproducible and self-contained:

* the ``gogoproto`` import and options and the ``google.api.http`` annotations are stripped
  (they only steer Go code and the HTTP gateway; the wire format is unchanged);
* the proto packages are renamed (``etcdserverpb`` -> ``tenure_etcdserverpb``, ``mvccpb`` ->
  ``tenure_mvccpb``, ``authpb`` -> ``tenure_authpb``) and the files live under
  ``tenure/_etcdpb/``, so our descriptors never collide with another etcd client's in the same
  process;
* the gRPC method paths in ``rpc_pb2_grpc.py`` are rewritten back to etcd's wire names
  (``/etcdserverpb.KV/Range``...), which the server routes on.

Generated with the pinned ``grpcio-tools`` of the dev group (checked below); ``--check`` exits 1
if the committed files differ from a fresh generation.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src"
PACKAGE_DIR = "tenure/_etcdpb"
GRPCIO_TOOLS = "1.85.1"  # keep in step with pyproject's dev group
DEFAULT_SRC = Path("/usr/share/gocode/src/go.etcd.io/etcd")
SOURCES = {
    "kv.proto": "mvcc/mvccpb/kv.proto",
    "auth.proto": "auth/authpb/auth.proto",
    "rpc.proto": "etcdserver/etcdserverpb/rpc.proto",
}
PACKAGES = {
    "etcdserverpb": "tenure_etcdserverpb",
    "mvccpb": "tenure_mvccpb",
    "authpb": "tenure_authpb",
}
IMPORTS = {
    "etcd/mvcc/mvccpb/kv.proto": f"{PACKAGE_DIR}/kv.proto",
    "etcd/auth/authpb/auth.proto": f"{PACKAGE_DIR}/auth.proto",
}
GENERATED = [
    f"{stem}{suffix}" for stem in ("kv_pb2", "auth_pb2", "rpc_pb2") for suffix in (".py", ".pyi")
] + ["rpc_pb2_grpc.py"]


def transform(text: str) -> str:
    """Strip Go/gateway annotations, rename packages, point imports at our copies."""
    text = re.sub(
        r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text, flags=re.M
    )
    text = re.sub(r"^option \(gogoproto\.[a-z_]+\) = [a-z]+;\n", "", text, flags=re.M)
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)  # field options, if any
    text = _strip_http_options(text)
    for old, new in IMPORTS.items():
        text = text.replace(f'import "{old}";', f'import "{new}";')
    for old, new in PACKAGES.items():
        text = re.sub(rf"^package {old};", f"package {new};", text, flags=re.M)
        text = re.sub(rf"\b{old}\.", f"{new}.", text)
    if "gogoproto" in text or "google.api" in text:
        raise SystemExit("gen-etcd-protos: an annotation was not stripped; update transform()")
    return text


def _strip_http_options(text: str) -> str:
    """Drop every ``option (google.api.http) = { ... };`` block (its braces nest)."""
    marker = re.compile(r"[ \t]*option \(google\.api\.http\) = \{")
    while (found := marker.search(text)) is not None:
        depth, i = 1, found.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        end = text.index(";", i) + 1
        if text[end : end + 1] == "\n":
            end += 1
        text = text[: found.start()] + text[end:]
    return text


def fix_method_paths(text: str) -> str:
    """Put etcd's wire names back: the server routes ``/etcdserverpb.KV/Range``."""
    return text.replace("'/tenure_etcdserverpb.", "'/etcdserverpb.").replace(
        "'tenure_etcdserverpb.", "'etcdserverpb."
    )


def generate(etcd_src: Path, out: Path) -> None:
    if version("grpcio-tools") != GRPCIO_TOOLS:
        raise SystemExit(f"gen-etcd-protos: needs grpcio-tools=={GRPCIO_TOOLS} (the dev group's)")
    with tempfile.TemporaryDirectory() as tmp:
        proto_dir = Path(tmp) / PACKAGE_DIR
        proto_dir.mkdir(parents=True)
        for name, rel in SOURCES.items():
            source = etcd_src / rel
            if not source.exists():
                raise SystemExit(
                    f"gen-etcd-protos: {source} not found; "
                    "apt-get install -y golang-etcd-server-dev"
                )
            (proto_dir / name).write_text(transform(source.read_text()))
        (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{tmp}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                *(f"{PACKAGE_DIR}/{name}" for name in SOURCES),
            ],
            check=True,
        )
    for extra in (out / PACKAGE_DIR).glob("*_pb2_grpc.py"):
        if extra.name != "rpc_pb2_grpc.py":
            extra.unlink()  # kv.proto and auth.proto define no services
    grpc_file = out / PACKAGE_DIR / "rpc_pb2_grpc.py"
    grpc_file.write_text(fix_method_paths(grpc_file.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd-src", type=Path, default=DEFAULT_SRC)
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed stubs are stale"
    )
    args = parser.parse_args()
    if not args.check:
        generate(args.etcd_src, OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(args.etcd_src, Path(tmp))
        stale = [
            name
            for name in GENERATED
            if (Path(tmp) / PACKAGE_DIR / name).read_text()
            != (OUT / PACKAGE_DIR / name).read_text()
        ]
    if stale:
        print("gen-etcd-protos: stale:", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
