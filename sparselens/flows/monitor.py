"""The `monitor` flow: time the run's champion against its dense model, keep the samples, publish a verdict.

A regression is a finding: the flow completes, returns `regressed: True`, publishes its artifacts and emits
`sparselens.champion.regressed` (every run emits `sparselens.champion.checked`); `sparselens phase monitor`
then exits 3.
"""

from __future__ import annotations

from prefect import flow

from sparselens.config import MonitorParams
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.monitor import monitor_task, publish_monitor_task


@flow(name="monitor", flow_run_name="monitor-{params.run_id}")
def monitor(params: MonitorParams) -> dict:
    """One check of the champion; returns the verdict record (`regressed` says whether to alarm)."""
    with phase(RunStore(params.root, params.run_id), "monitor", params.overrides()):
        result = monitor_task(params.root, params.run_id)
        publish_monitor_task(result)
    return result
