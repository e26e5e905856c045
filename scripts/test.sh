#!/usr/bin/env bash
# Set up everything and run the whole test suite, on a fresh machine or an old checkout:
#   1. the servers from the OS packages (scripts/install-servers.sh; apt-get as root),
#   2. a virtualenv in .venv with tenure, every backend's client library and the dev tools,
#   3. the checks: generated sync code is current, ruff (format + lint), mypy --strict, pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k redis -x`).
# In CI (CI=true) a missing server fails the run; elsewhere its tests are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "servers (OS packages)"
if ! bash scripts/install-servers.sh; then
    if [ "${CI:-}" = "true" ]; then
        echo "test.sh: servers could not be installed, and CI=true: failing" >&2
        exit 1
    fi
    echo "test.sh: continuing without them: their tests will be skipped" >&2
fi

step "python environment (.venv)"
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "tenure needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade 'pip>=25.1'
.venv/bin/python -m pip install -q -e '.[all]' --group dev --group docs

step "generated sync code is current"
.venv/bin/python scripts/async_to_sync.py --check

if [ -d /usr/share/gocode/src/go.etcd.io/etcd/etcdserver/etcdserverpb ]; then
    step "generated etcd stubs are current"  # needs golang-etcd-server-dev; optional
    .venv/bin/python scripts/gen-etcd-protos.py --check
fi

step "ruff"
.venv/bin/ruff format --check .
.venv/bin/ruff check .

step "mypy --strict"
.venv/bin/mypy

step "docs site (mkdocs build --strict)"
site_dir=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site_dir"
rm -rf "$site_dir"

step "pytest"
exec .venv/bin/python -m pytest "$@"
