"""Fixtures of the contract suite: ``backend`` (parametrized) and client factories.

``aclients`` (asyncio) and ``clients`` (sync) make connected clients that are closed after the
test; the sync tests are generated from the async ones by scripts/async_to_sync.py, which renames
``aclients`` to ``clients``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tenure
from tenure import aio

from .backends import BACKENDS, Backend, make_backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
async def aclients(backend: Backend) -> AsyncIterator[Callable[..., Awaitable[aio.Client]]]:
    made: list[aio.Client] = []

    async def make(**options: Any) -> aio.Client:
        client = await aio.connect(backend.url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def clients(backend: Backend) -> Iterator[Callable[..., tenure.Client]]:
    made: list[tenure.Client] = []

    def make(**options: Any) -> tenure.Client:
        client = tenure.connect(backend.url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
