"""The per-run-id lock: a second holder of one run id waits (here: times out), other run ids go ahead."""

import threading

import pytest

from sparselens.flows.locks import run_lock


def test_one_holder_per_run_id(prefect_harness):
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with run_lock("lock-a"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        with pytest.raises(TimeoutError):
            with run_lock("lock-a", timeout_seconds=2):
                pass
        with run_lock("lock-b", timeout_seconds=10):  # another run id is not held up
            pass
    finally:
        release.set()
        holder.join(60)
    with run_lock("lock-a", timeout_seconds=30):  # released on exit
        pass
