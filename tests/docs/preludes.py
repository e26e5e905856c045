"""Hidden setup for documentation examples: ``<!-- docs-test: prelude NAME -->`` before a block.

A prelude defines what an example only names (the resource it writes, the job it runs) so the
example can stay short and still run. It is prepended to the block when the block is executed
and never shown on the site. Keep each one small and boring: the example must not depend on
anything clever here. See docs/development.md ("Executed examples").
"""

from __future__ import annotations

PYTHON: dict[str, str] = {
    # README "30 seconds of code": the resource and the jobs the example hands its tokens to.
    "resource": """
import threading

resource = {"value": 0, "fence": 0}
catalog = ["a", "b"]


def write(resource, fence):
    assert fence > resource["fence"], "stale fencing token"
    resource["value"] += 1
    resource["fence"] = fence


def serve(catalog, fence):
    assert fence > 0


def train(fence):
    assert fence > 0


def run_scheduler(stop: threading.Event) -> None:
    assert not stop.is_set()
""",
    # README's asyncio example: the same, awaitable.
    "aio-resource": """
resource = {"value": 0, "fence": 0}


async def write(resource, fence):
    assert fence > resource["fence"], "stale fencing token"
    resource["value"] += 1
    resource["fence"] = fence


async def job():
    return "done"
""",
}

SHELL: dict[str, str] = {
    # README "From the shell": the scripts the commands run.
    "scripts": """
printf '#!/bin/sh\\necho "nightly run, token $TENURE_TOKEN"\\n' > nightly.sh
printf '#!/bin/sh\\necho "training, token $TENURE_TOKEN"\\n' > train.sh
chmod +x nightly.sh train.sh
""",
}
