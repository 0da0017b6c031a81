"""One run at a time per run id: a Prefect global concurrency limit named after the run, held by a phase flow.

Deployment concurrency limits (prefect.yaml) serialise the runs of one deployment; this lock serialises the
flows that touch one run id whichever deployment, CLI call or parent flow started them, and lets runs of other
run ids go ahead. The limit (`sparselens-run-<run_id>`, 1 slot) is created on first use; a second holder waits
for the slot (or raises TimeoutError after `timeout_seconds`). Hold it in phase flows only, never in a parent
flow around its subflows (they would wait for their parent).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


def lock_name(run_id: str) -> str:
    """The global concurrency limit that guards `run_id`."""
    return f"sparselens-run-{run_id}"


def ensure_run_limit(run_id: str) -> str:
    """Create run `run_id`'s limit (1 slot) unless it exists; return its name."""
    name = lock_name(run_id)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextlib.contextmanager
def run_lock(run_id: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold run `run_id`'s slot for the block: other holders of the same run id wait, other run ids do not."""
    with concurrency(ensure_run_limit(run_id), occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield
