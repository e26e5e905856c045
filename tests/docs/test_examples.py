"""Every ```python and ```sh / ```console block of README.md and docs/**/*.md is executed.

How a block runs (docs/development.md, "Executed examples", is the user-facing description):

- The blocks of one page run in order, in one fresh working directory per page, so a block can
  use a file that an earlier block of the page wrote (see ``file`` below).
- ``python`` blocks run as scripts (``sys.executable``, a subprocess); ``sh``/``bash`` blocks
  run with ``bash -euo pipefail``; in ``console`` blocks the lines starting with ``$ `` are the
  commands (the others are output and are not checked). The venv's ``bin`` is first on PATH, so
  ``tenure`` and ``python`` are the ones under test.
- Environment: ``TENURE_URL`` is a file backend in the page's temporary directory, and so is
  ``XDG_STATE_HOME`` (``tenure.connect()`` with no URL stays there too). URLs written in the
  examples are rewritten: ``file:///tmp/...`` to that directory, and, in a block marked
  ``server KIND``, every ``KIND://host:port`` to the suite's throw-away server (which is then
  also ``TENURE_URL``).

Markers, in HTML comments on the lines just above a block (blank lines allowed in between):

- ``<!-- docs-test: skip REASON -->``: not run; the reason is required.
- ``<!-- docs-test: prelude NAME -->``: prepend the named hidden setup (tests/docs/preludes.py).
- ``<!-- docs-test: server KIND -->``: start the throw-away server KIND (redis, postgres, etcd,
  zookeeper) and point the block at it.
- ``<!-- docs-test: file PATH -->``: write the block to PATH in the page's directory instead of
  running it (the page says "save this as PATH").
- ``<!-- docs-test: checkout -->``: run the block in a copy of the project (``pyproject.toml``,
  ``README.md``, ``src/``), for the "from a clone of this repository" steps.

docs/recipes.md is left out: tests/test_recipes.py runs its recipes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs import preludes

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXCLUDED = {
    DOCS / "recipes.md": "tests/test_recipes.py runs it",
}
RUNNABLE = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh",
            "console": "console"}  # fmt: skip
SERVERS = {"redis": "redis", "postgres": "postgresql", "etcd": "etcd", "zookeeper": "zookeeper"}
WORKERS = 4  # pages run at once
BLOCK_TIMEOUT = 240.0  # seconds; the slowest block (venv + install + tenure demo) takes ~15 s idle
MAX_SKIPS = 7  # the skips there are now: a new one needs a reason and a conscious bump here

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_VERBS = {"skip", "prelude", "server", "file", "checkout"}
_NO_ARGUMENT = {"checkout"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str  # python, sh or console
    code: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{_rel(self.page)}:{self.line}"

    def has(self, verb: str) -> bool:
        return any(name == verb for name, _ in self.directives)

    def get(self, verb: str) -> list[str]:
        return [arg for name, arg in self.directives if name == verb]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pages() -> list[Path]:
    found = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [page for page in found if page not in EXCLUDED and "_hooks" not in page.parts]


def parse(page: Path) -> tuple[list[Block], list[str]]:
    """The runnable blocks of ``page`` with their markers, and the marker errors found."""
    blocks: list[Block] = []
    errors: list[str] = []
    pending: list[tuple[str, str, int]] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        fence = _FENCE.match(line)
        if directive:
            verb, _, arg = directive["body"].partition(" ")
            pending.append((verb, arg.strip(), i + 1))
        elif fence:
            indent, marker = len(fence["indent"]), fence["fence"]
            body: list[str] = []
            i += 1
            while i < len(lines) and not (
                lines[i].strip().startswith(marker) and not lines[i].strip().strip(marker[0])
            ):
                body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
                i += 1
            language = RUNNABLE.get(fence["info"].lower())
            start = i - len(body)
            if language is not None:
                markers = [(verb, arg) for verb, arg, _ in pending]
                blocks.append(Block(page, start, language, "\n".join(body) + "\n", markers))
            elif pending:
                errors.append(f"{_rel(page)}:{start}: docs-test marker before a block not run")
            for verb, arg, at in pending:
                where = f"{_rel(page)}:{at}"
                if verb not in _VERBS:
                    errors.append(f"{where}: unknown docs-test marker {verb!r}")
                elif (not arg) != (verb in _NO_ARGUMENT):
                    errors.append(
                        f"{where}: docs-test {verb}: wrong argument (skip needs a reason)"
                    )
                elif verb == "prelude" and language is not None:
                    table = preludes.PYTHON if language == "python" else preludes.SHELL
                    if arg not in table:
                        errors.append(f"{where}: no {language} prelude {arg!r} in preludes.py")
                elif verb == "server" and arg not in SERVERS:
                    errors.append(f"{where}: unknown server {arg!r} (one of {sorted(SERVERS)})")
            pending = []
        elif line.strip():
            if pending:
                errors.append(
                    f"{_rel(page)}:{pending[0][2]}: docs-test marker not directly above a block"
                )
            pending = []
        i += 1
    if pending:
        errors.append(f"{_rel(page)}: docs-test marker at the end of the page")
    return blocks, errors


def console_commands(code: str) -> str:
    """The commands of a console transcript (``$ `` lines and their ``\\`` continuations)."""
    commands: list[str] = []
    continuing = False
    for line in code.splitlines():
        if continuing or line.startswith("$ "):
            text = line if continuing else line[2:]
            commands.append(text)
            continuing = text.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def _with_namespace(url: str, namespace: str | None, query: str = "") -> str:
    parts = [part for part in (query, f"namespace={namespace}" if namespace else "") if part]
    return url + ("&" if "?" in url else "?") + "&".join(parts) if parts else url


def _rewrite(
    code: str, workdir: Path, server_urls: dict[str, str], namespace: str | None = None
) -> str:
    """Point the block's URLs at the page's directory and at the throw-away servers.

    Server URLs get the page's ``namespace`` (pages run concurrently and share the servers),
    except PostgreSQL's, which an example may hand to psycopg rather than to tenure.
    """
    code = code.replace("file:///tmp/", f"file://{workdir}/tmp/")
    for kind, url in server_urls.items():
        own = None if kind == "postgres" else namespace

        def replace(match: re.Match[str], url: str = url, own: str | None = own) -> str:
            return _with_namespace(url, own, (match[1] or "").lstrip("?"))

        code = re.sub(rf"(?<![\w+]){SERVERS[kind]}://[^\s'\"?]*(\?[^\s'\"]*)?", replace, code)
    return code


def _checkout(workdir: Path) -> Path:
    """A copy of what ``pip install .`` needs from the project, in ``workdir/checkout``."""
    target = workdir / "checkout"
    if not target.exists():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "src", target / "src", ignore=ignore)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, target / name)
    return target


def _run(block: Block, code: str, workdir: Path, env: dict[str, str]) -> None:
    if block.language == "python":
        script, interpreter = workdir / ".docs-test-block.py", [sys.executable]
    else:
        script, interpreter = workdir / ".docs-test-block.sh", ["bash", "-euo", "pipefail"]
    script.write_text(code, encoding="utf-8")
    cwd = _checkout(workdir) if block.has("checkout") else workdir
    # A session of its own, so every process the block starts (`cmd &`) can be killed with it.
    proc = subprocess.Popen(
        [*interpreter, str(script)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{block.where}: timed out after {BLOCK_TIMEOUT} s\n{code}\n{stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running
    if proc.returncode != 0:
        pytest.fail(
            f"{block.where}: {block.language} block exited {proc.returncode}\n"
            f"--- code (as run) ---\n{code}--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
            pytrace=False,
        )


def _page_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env["TENURE_URL"] = f"file://{tmp}/locks"
    env["XDG_STATE_HOME"] = str(tmp / "state")
    env["PYTHONPATH"] = str(ROOT / "src")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"  # no network round trip for pip's own version
    return env


def _slug(page: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "-", _rel(page).lower()).strip("-")


def run_page(page: Path, tmp: Path, server: Callable[[str], str]) -> list[str]:
    """Run every block of ``page`` in order; return one timing line per block run."""
    blocks, errors = parse(page)
    assert not errors, errors
    workdir = tmp / "work"
    (workdir / "tmp").mkdir(parents=True)
    namespace = f"docs-{_slug(page)}"
    timings: list[str] = []
    for block in blocks:
        if block.get("skip"):
            continue
        env = _page_env(tmp)
        urls = {kind: server(kind) for kind in block.get("server")}
        for url in urls.values():
            env["TENURE_URL"] = _with_namespace(url, namespace)
        code = console_commands(block.code) if block.language == "console" else block.code
        code = _rewrite(code, workdir, urls, namespace)
        for path in block.get("file"):
            target = workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code, encoding="utf-8")
        if block.get("file"):
            continue
        table = preludes.PYTHON if block.language == "python" else preludes.SHELL
        prelude = "".join(table[name] + "\n" for name in block.get("prelude"))
        started = time.monotonic()
        _run(block, prelude + code, workdir, env)
        timings.append(f"{block.where}: {time.monotonic() - started:.1f} s")
    return timings


@dataclass
class Outcome:
    timings: list[str] = field(default_factory=list)
    error: BaseException | None = None


PAGES = pages()


@pytest.fixture(scope="session")
def page_outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Path, Outcome]:
    """Run the selected pages at once (WORKERS at a time): most of their time is spent waiting
    (pip, `tenure bench`'s timed runs, lock handoffs), so the suite pays for the longest page
    rather than for the sum. Each page has its own directory and, on the shared servers, its
    own namespace."""
    selected: list[Path] = [
        Path(str(item.callspec.params["page"]))
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_examples_run"
    ]
    kinds = {
        kind
        for page in selected
        for block in parse(page)[0]
        if not block.get("skip")
        for kind in block.get("server")
    }
    urls: dict[str, str] = {}
    missing: dict[str, BaseException] = {}
    for kind in sorted(kinds):  # started here, in the main thread, by the suite's fixtures
        try:
            urls[kind] = request.getfixturevalue(f"{kind}_server").url
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            missing[kind] = exc

    def server(kind: str) -> str:
        if kind in missing:
            raise missing[kind]
        return urls[kind]

    def run(page: Path) -> Outcome:
        outcome = Outcome()
        try:
            outcome.timings = run_page(page, directories[page], server)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            outcome.error = exc  # re-raised by the page's own test
        except BaseException:  # a bug of the runner: keep the whole traceback of this thread
            outcome.error = pytest.fail.Exception(
                f"{_rel(page)}: the runner failed:\n{traceback.format_exc()}", pytrace=False
            )
        return outcome

    # Made here: pytest's temporary-directory factory is not thread-safe.
    directories = {page: tmp_path_factory.mktemp(_slug(page)) for page in selected}

    def weight(page: Path) -> tuple[int, int]:  # an install from a checkout takes longest
        blocks = parse(page)[0]
        return sum(block.has("checkout") for block in blocks), len(blocks)

    heaviest_first = sorted(selected, key=weight, reverse=True)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return dict(zip(heaviest_first, pool.map(run, heaviest_first), strict=True))


# The first of these tests sets up `page_outcomes`, which runs every page: above the suite's
# 120 s per test when the machine is loaded.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", PAGES, ids=[_rel(page) for page in PAGES])
def test_examples_run(page: Path, page_outcomes: dict[Path, Outcome]) -> None:
    outcome = page_outcomes[page]
    print("\n".join(outcome.timings))  # seconds per block: shown with -rP
    if outcome.error is not None:
        raise outcome.error


def test_markers_are_valid_and_skips_few() -> None:
    problems: list[str] = []
    skips: list[str] = []
    runnable = 0
    for page in PAGES:
        blocks, errors = parse(page)
        problems += errors
        runnable += len(blocks)
        skips += [f"{block.where}: {reason}" for block in blocks for reason in block.get("skip")]
    assert not problems
    assert runnable > 20, "the parser finds the examples"
    assert len(skips) <= MAX_SKIPS, "\n".join(skips)


def test_parser_reads_markers_and_console_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- docs-test: skip needs a cluster -->\n\n```python\nboom()\n```\n\n"
        "<!-- docs-test: prelude resource -->\n```python\nwrite(resource, fence=1)\n```\n\n"
        "```console\n$ echo one \\\n  two\none two\n$ true\n```\n\n```text\nnot run\n```\n"
        "<!-- docs-test: bogus x -->\n```sh\ntrue\n```\n",
        encoding="utf-8",
    )
    blocks, errors = parse(page)
    assert [b.language for b in blocks] == ["python", "python", "console", "sh"]
    assert blocks[0].get("skip") == ["needs a cluster"]
    assert blocks[1].get("prelude") == ["resource"]
    assert console_commands(blocks[2].code) == "echo one \\\n  two\ntrue\n"
    assert errors == [f"{page}:24: unknown docs-test marker 'bogus'"]


def test_a_failing_example_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nraise SystemExit(3)\n```\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="exited 3"):
        run_page(page, tmp_path, lambda kind: pytest.fail("no server needed"))


def test_urls_are_rewritten(tmp_path: Path) -> None:
    code = (
        'connect("file:///tmp/locks")\nexport TENURE_URL=redis://localhost:6379\n'
        "redis+sentinel://s1:26379/x rediss://h:1 'redis://db:6379/2'\n"
    )
    out = _rewrite(code, tmp_path, {"redis": "redis://127.0.0.1:4242/0"}, "docs-x")
    assert out == (
        f'connect("file://{tmp_path}/tmp/locks")\n'
        "export TENURE_URL=redis://127.0.0.1:4242/0?namespace=docs-x\n"
        "redis+sentinel://s1:26379/x rediss://h:1 'redis://127.0.0.1:4242/0?namespace=docs-x'\n"
    )
    with_query = _rewrite("redis://db:6379/2?ttl=10", tmp_path, {"redis": "redis://h:1/0"}, "n")
    assert with_query == "redis://h:1/0?ttl=10&namespace=n"
    postgres = _rewrite("postgresql://app@db/app x", tmp_path, {"postgres": "postgresql://u@h:2/p"})
    assert postgres == "postgresql://u@h:2/p x"
