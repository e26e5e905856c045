"""Tests for scripts/async_to_sync.py, the generator of the synchronous twins."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "async_to_sync.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


a2s = _load_script()


def conv(source: str) -> str:
    result: str = a2s.convert(textwrap.dedent(source), path="src/tenure/_async/x.py")
    return result


def dedent(text: str) -> str:
    return textwrap.dedent(text)


# --------------------------------------------------------------------------- keywords


def test_async_def_with_for_await() -> None:
    source = """\
        async def f(lock, items):  # a comment
            async with lock:
                async for item in items:
                    await item.run( 1,2 )
            return await lock.result()
        """
    assert conv(source) == dedent("""\
        def f(lock, items):  # a comment
            with lock:
                for item in items:
                    item.run( 1,2 )
            return lock.result()
        """)


def test_async_comprehensions() -> None:
    source = """\
        xs = [x async for x in y]
        ys = {k: await v async for k, v in z}
        zs = [await g for g in gs]
        """
    assert conv(source) == dedent("""\
        xs = [x for x in y]
        ys = {k: v for k, v in z}
        zs = [g for g in gs]
        """)


def test_await_across_lines() -> None:
    source = """\
        x = await \\
            f()
        y = (await
             g())
        """
    assert conv(source) == dedent("""\
        x = f()
        y = (
             g())
        """)


def test_decorated_async_method_keeps_layout() -> None:
    source = """\
        class C:
            @property
            async   def  value(self) -> int:
                '''Docstring mentioning async and await stays.'''
                return await   self._get()
        """
    assert conv(source) == dedent("""\
        class C:
            @property
            def  value(self) -> int:
                '''Docstring mentioning async and await stays.'''
                return self._get()
        """)


def test_source_without_trailing_newline() -> None:
    assert conv("await f()") == "f()"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("__aenter__", "__enter__"),
        ("__aexit__", "__exit__"),
        ("__aiter__", "__iter__"),
        ("__anext__", "__next__"),
        ("aclose", "close"),
        ("StopAsyncIteration", "StopIteration"),
        ("AsyncIterator", "Iterator"),
        ("AsyncIterable", "Iterable"),
        ("AsyncGenerator", "Generator"),
        ("AbstractAsyncContextManager", "AbstractContextManager"),
        ("asynccontextmanager", "contextmanager"),
        ("aiter", "iter"),
        ("anext", "next"),
        ("_async", "_sync"),
        ("AsyncClient", "Client"),
        ("AsyncLock", "Lock"),
        ("AsyncIOThing", "IOThing"),
    ],
)
def test_renamed_names(old: str, new: str) -> None:
    assert conv(f"x = {old}\ny = obj.{old}(a={old})\n") == f"x = {new}\ny = obj.{new}(a={new})\n"


@pytest.mark.parametrize(
    "name",
    [
        "Awaitable",
        "aio",
        "asyncio",
        "Async",
        "Asyncio",
        "async_lock",
        "my_async",
        "_async_helper",
        "MyAsyncLock",
        "aclosed",
    ],
)
def test_untouched_names(name: str) -> None:
    source = f"x = {name}\ny = obj.{name}\n"
    assert conv(source) == source


def test_imports_are_renamed() -> None:
    source = """\
        import tenure._async.backends as backends
        from collections.abc import AsyncIterator, Awaitable
        from contextlib import AbstractAsyncContextManager, asynccontextmanager
        from tenure._async.lock import AsyncLock as AsyncLock
        from ._async import (  # keep
            AsyncClient,
        )
        """
    assert conv(source) == dedent("""\
        import tenure._sync.backends as backends
        from collections.abc import Iterator, Awaitable
        from contextlib import AbstractContextManager, contextmanager
        from tenure._sync.lock import Lock as Lock
        from ._sync import (  # keep
            Client,
        )
        """)


def test_table_is_extensible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(a2s.NAME_SUBSTITUTIONS, "aconnect", "connect")
    monkeypatch.setitem(a2s.NAME_SUBSTITUTIONS, "async_lock", "lock")
    monkeypatch.setitem(a2s.NAME_SUBSTITUTIONS, "AsyncMock", "AsyncMock")  # opt out of prefix
    source = "await c.aconnect()\nasync_lock = AsyncMock()\n"
    assert conv(source) == "c.connect()\nlock = AsyncMock()\n"


def test_comments_are_untouched() -> None:
    source = "x = 1  # await AsyncLock.aclose() in tenure._async.x\n"
    assert conv(source) == source


# --------------------------------------------------------------------------- strings


def test_docstrings_and_text_are_untouched() -> None:
    source = '''\
        """Async helpers: use AsyncLock and aclose(), see tenure/_async."""
        msg = "AsyncLock is closed by aclose()"
        other = 'async def'
        '''
    assert conv(source) == dedent(source)


def test_import_like_paths_in_strings() -> None:
    source = """\
        a = "tenure._async.backends.file:FileDriver"
        b = "see src/tenure/_async/lock.py for details"
        c = f"tenure._async.{name}"
        """
    assert conv(source) == dedent("""\
        a = "tenure._sync.backends.file:FileDriver"
        b = "see src/tenure/_sync/lock.py for details"
        c = f"tenure._sync.{name}"
        """)


def test_dotted_name_strings_are_renamed() -> None:
    source = """\
        __all__ = ["AsyncLock", 'aclose', "Event"]
        x = getattr(obj, "aclose")
        y: "AsyncIterator" = z
        d = {"file": "tenure._async.backends.file:AsyncFileDriver", "m": "tenure._async"}
        """
    assert conv(source) == dedent("""\
        __all__ = ["Lock", 'close', "Event"]
        x = getattr(obj, "close")
        y: "Iterator" = z
        d = {"file": "tenure._sync.backends.file:FileDriver", "m": "tenure._sync"}
        """)


@pytest.mark.parametrize("literal", ['b"aclose"', 'f"aclose"', '"""aclose"""', '"aclose()"'])
def test_other_strings_keep_names(literal: str) -> None:
    source = f"x = {literal}\n"
    assert conv(source) == source


# --------------------------------------------------------------------------- markers


def test_async_only_line_is_removed() -> None:
    source = """\
        import asyncio  # tenure: async-only
        async def f():
            await asyncio.sleep(0)  # tenure: async-only -- yield to the loop
            return 1
        """
    assert conv(source) == "def f():\n    return 1\n"


def test_sync_comment_line_becomes_code() -> None:
    source = """\
        async def f(sock):
            # tenure: sync sock.settimeout(None)
            return await sock.recv()
        """
    assert conv(source) == dedent("""\
        def f(sock):
            sock.settimeout(None)
            return sock.recv()
        """)


def test_async_only_block_is_removed() -> None:
    source = """\
        x = 1
        # tenure: begin async-only
        import asyncio

        async def helper():
            await asyncio.sleep(0)
        # tenure: end async-only
        y = 2
        """
    assert conv(source) == "x = 1\ny = 2\n"


def test_sync_only_block_is_uncommented() -> None:
    source = """\
        def f(x):
            # tenure: begin sync-only
            # if x:
            #     return 0
            #
            # y = x  # why

            # tenure: end sync-only
            return x
        """
    assert conv(source) == dedent("""\
        def f(x):
            if x:
                return 0

            y = x  # why

            return x
        """)


def test_markers_inside_strings_are_ignored() -> None:
    source = '''\
        DOC = """
        x = 1  # tenure: async-only
        """
        '''
    assert conv(source) == dedent(source)


def test_no_sync_marker_is_ignored_by_convert() -> None:
    source = "# tenure: no-sync\nx = 1\n"
    assert conv(source) == source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1  # tenure: sync-only\n", "unknown directive"),
        ("x = 1  # tenure: asyncOnly\n", "unknown directive"),
        ("x = 1  # tenure: sync y = 2\n", "own line"),
        ("x = 1  # tenure: begin async-only\n", "own line"),
        ("# tenure: begin whatever\n", "unknown block kind"),
        ("# tenure: begin async-only\nx = 1\n", "unterminated"),
        ("# tenure: end sync-only\n", "without matching begin"),
        ("# tenure: begin async-only\n# tenure: end sync-only\n", "without matching begin"),
        ("# tenure: begin sync-only\n# tenure: begin async-only\n", "inside the sync-only"),
        ("# tenure: begin sync-only\nx = 1\n# tenure: end sync-only\n", "must be comments"),
    ],
)
def test_marker_errors(source: str, message: str) -> None:
    with pytest.raises(a2s.ConversionError, match=message):
        a2s.convert(source, path="x.py")


def test_tokenize_error_is_reported() -> None:
    with pytest.raises(a2s.ConversionError, match=r"x\.py: cannot tokenize"):
        a2s.convert("x = (\n", path="x.py")


# --------------------------------------------------------------------------- formatting


def test_format_source_drops_unused_imports_and_sorts() -> None:
    converted = a2s.convert(
        dedent("""\
            import asyncio
            from collections.abc import AsyncIterator, Iterator
            from tenure._async._compat import sleep
            import contextlib


            async def f(xs: AsyncIterator[int], lock: AsyncLock) -> None:
                with contextlib.suppress(TimeoutError):
                    async with lock:
                        await sleep(1)


            __all__ = ["f", "AsyncThing"]
            """),
        path="src/tenure/_async/x.py",
    )
    formatted = a2s.format_source(converted, "src/tenure/_sync/x.py")
    assert formatted == dedent("""\
        import contextlib
        from collections.abc import Iterator

        from tenure._sync._compat import sleep


        def f(xs: Iterator[int], lock: Lock) -> None:
            with contextlib.suppress(TimeoutError), lock:
                sleep(1)


        __all__ = ["Thing", "f"]
        """)


def test_format_source_removes_imports_only_async_code_used() -> None:
    text = "import asyncio\nimport time\n\n\ndef f() -> float:\n    return time.time()\n"
    formatted = a2s.format_source(text, "src/tenure/_sync/x.py")
    assert formatted == "import time\n\n\ndef f() -> float:\n    return time.time()\n"


def test_format_source_keeps_reexports_in_init() -> None:
    text = "from tenure._sync.lock import Lock\n"
    assert a2s.format_source(text, "src/tenure/_sync/__init__.py") == text


def test_format_source_reports_syntax_errors() -> None:
    with pytest.raises(a2s.ConversionError, match="failed"):
        a2s.format_source("def f(:\n", "src/tenure/_sync/x.py")


def test_generate_adds_header() -> None:
    text = a2s.generate(
        "async def f() -> None:\n    await g()\n",
        source_rel="src/tenure/_async/x.py",
        output_rel="src/tenure/_sync/x.py",
    )
    assert text == (
        "# WARNING: generated by scripts/async_to_sync.py from src/tenure/_async/x.py;"
        " do not edit.\ndef f() -> None:\n    g()\n"
    )


def test_long_header_gets_noqa() -> None:
    short = a2s.header("src/tenure/_async/x.py", max_length=100)
    assert short.endswith("; do not edit.")
    long = a2s.header("tests/contract/" + "x" * 60 + "_async.py", max_length=100)
    assert long.startswith(a2s.HEADER_PREFIX)
    assert long.endswith("; do not edit.  # noqa: E501")


# --------------------------------------------------------------------------- files


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), encoding="utf-8")


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    _write(root / "pyproject.toml", "[tool.ruff]\nline-length = 100\n")
    _write(root / "src/tenure/_async/__init__.py", '"""Async API."""\n')
    _write(
        root / "src/tenure/_async/lock.py",
        """\
        from tenure._async._compat import sleep


        class AsyncLock:
            async def __aenter__(self) -> "AsyncLock":
                await sleep(0)
                return self
        """,
    )
    _write(root / "src/tenure/_async/backends/__init__.py", "")
    _write(root / "src/tenure/_async/backends/file.py", "async def open_file() -> None: ...\n")
    _write(root / "src/tenure/_async/_compat.py", "async def sleep(x: float) -> None: ...\n")
    _write(root / "src/tenure/_async/aio_only.py", '"""Docs."""\n\n# tenure: no-sync\nX = 1\n')
    _write(root / "src/tenure/_sync/_compat.py", "def sleep(x: float) -> None: ...\n")
    _write(
        root / "tests/contract/test_lock_async.py",
        """\
        from tenure._async.lock import AsyncLock


        async def test_lock() -> None:
            async with AsyncLock():
                pass
        """,
    )
    return root


def test_discover(fake_repo: Path) -> None:
    jobs = a2s.discover(fake_repo)
    assert [(job.source, job.output) for job in jobs] == [
        ("src/tenure/_async/__init__.py", "src/tenure/_sync/__init__.py"),
        ("src/tenure/_async/backends/__init__.py", "src/tenure/_sync/backends/__init__.py"),
        ("src/tenure/_async/backends/file.py", "src/tenure/_sync/backends/file.py"),
        ("src/tenure/_async/lock.py", "src/tenure/_sync/lock.py"),
        ("tests/contract/test_lock_async.py", "tests/contract/test_lock_sync.py"),
    ]


def test_write_then_check(fake_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert a2s.check(fake_repo) == 1
    out = capsys.readouterr().out
    assert "missing: src/tenure/_sync/lock.py" in out
    assert "missing: tests/contract/test_lock_sync.py" in out

    assert a2s.write(fake_repo) == 0
    lock = (fake_repo / "src/tenure/_sync/lock.py").read_text(encoding="utf-8")
    assert lock == (
        "# WARNING: generated by scripts/async_to_sync.py from src/tenure/_async/lock.py;"
        " do not edit.\n"
        "from tenure._sync._compat import sleep\n\n\n"
        "class Lock:\n"
        '    def __enter__(self) -> "Lock":\n'
        "        sleep(0)\n"
        "        return self\n"
    )
    test = (fake_repo / "tests/contract/test_lock_sync.py").read_text(encoding="utf-8")
    assert "def test_lock() -> None:\n    with Lock():\n" in test
    assert (fake_repo / "src/tenure/_sync/backends/file.py").exists()
    assert not (fake_repo / "src/tenure/_sync/aio_only.py").exists()
    assert (fake_repo / "src/tenure/_sync/_compat.py").read_text(encoding="utf-8") == (
        "def sleep(x: float) -> None: ...\n"
    )
    capsys.readouterr()
    assert a2s.check(fake_repo) == 0

    # A second run changes nothing.
    assert a2s.write(fake_repo) == 0
    assert "0 change(s)" in capsys.readouterr().out


def test_check_reports_stale_with_diff(fake_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a2s.write(fake_repo)
    target = fake_repo / "src/tenure/_sync/lock.py"
    target.write_text(target.read_text(encoding="utf-8") + "HAND_EDIT = 1\n", encoding="utf-8")
    capsys.readouterr()
    assert a2s.check(fake_repo) == 1
    out = capsys.readouterr().out
    assert "stale: src/tenure/_sync/lock.py" in out
    assert "-HAND_EDIT = 1" in out
    assert "+++ src/tenure/_sync/lock.py (generated)" in out


def test_orphans_are_reported_and_removed(
    fake_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a2s.write(fake_repo)
    (fake_repo / "src/tenure/_async/backends/file.py").unlink()
    (fake_repo / "src/tenure/_async/backends/__init__.py").unlink()
    (fake_repo / "src/tenure/_async/backends").rmdir()
    (fake_repo / "tests/contract/test_lock_async.py").unlink()
    _write(fake_repo / "src/tenure/_sync/handwritten.py", "X = 1\n")
    _write(fake_repo / "tests/contract/test_other_sync.py", "X = 1\n")
    capsys.readouterr()

    assert a2s.check(fake_repo) == 1
    out = capsys.readouterr().out
    assert "extra: src/tenure/_sync/backends/file.py" in out
    assert "extra: src/tenure/_sync/backends/__init__.py" in out
    assert "extra: tests/contract/test_lock_sync.py" in out
    assert "handwritten" not in out
    assert "_compat" not in out
    assert "test_other_sync" not in out

    a2s.write(fake_repo)
    assert not (fake_repo / "src/tenure/_sync/backends").exists()
    assert not (fake_repo / "tests/contract/test_lock_sync.py").exists()
    assert (fake_repo / "tests/contract").is_dir()
    assert (fake_repo / "src/tenure/_sync/handwritten.py").exists()
    assert (fake_repo / "src/tenure/_sync/_compat.py").exists()
    assert (fake_repo / "tests/contract/test_other_sync.py").exists()
    assert a2s.check(fake_repo) == 0


def test_no_sync_source_makes_its_output_extra(fake_repo: Path) -> None:
    a2s.write(fake_repo)
    source = fake_repo / "src/tenure/_async/backends/file.py"
    source.write_text("# tenure: no-sync\n" + source.read_text(encoding="utf-8"), "utf-8")
    assert a2s.find_extras(a2s.discover(fake_repo), fake_repo) == [
        "src/tenure/_sync/backends/file.py"
    ]


def test_main_reports_conversion_errors(
    fake_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(fake_repo / "src/tenure/_async/bad.py", "x = 1  # tenure: sync-only\n")
    assert a2s.main(["--check"], root=fake_repo) == 2
    assert "src/tenure/_async/bad.py:1: unknown directive" in capsys.readouterr().err


# --------------------------------------------------------------------------- the repository


@pytest.mark.skipif(
    not (REPO / "src" / "tenure" / "_async").is_dir(), reason="no src/tenure/_async yet"
)
def test_repository_is_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        cwd=tmp_path,  # the script must not depend on the working directory
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
