"""`sparselens` command line: run the whole pipeline, or re-run one phase of an existing run.

    sparselens run --preset quick [--root DIR] [--run-id ID] [--topk K]
    sparselens phase train|evaluate|capture|interpret|patterns --run-id ID [--root DIR] [--dask-address ADDR]
    sparselens runs [--root DIR]

Inputs are checked before Prefect starts, so a bad preset, k, run id or checkpoint gives one clear error, a
non-zero exit and no new files.
"""

from __future__ import annotations

import argparse
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning made steps up to 100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sparselens.config import ConfigError, RunParams, get_preset
from sparselens.storage import DEFAULT_ROOT, CorruptCheckpointError, RunNotFoundError, RunStore, list_runs
from sparselens.training import StageNotDoneError, TrainingDivergedError

PHASES = ("train", "evaluate", "capture", "interpret", "patterns")  # = sparselens.flows.PHASES, without Prefect
USER_ERRORS = (
    ConfigError,
    RunNotFoundError,
    CorruptCheckpointError,
    StageNotDoneError,
    TrainingDivergedError,
    FileExistsError,
)
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the first start migrates a database (~20 s)
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparselens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create a run and execute the whole pipeline")
    run.add_argument("--preset", default="quick", help="tiny (tests), quick (2-core CPU), full (GPU)")
    run.add_argument("--root", default=DEFAULT_ROOT, help="run store root: a path or an fsspec URL")
    run.add_argument("--run-id", default=None, help="run id (default: <preset>-<timestamp>)")
    run.add_argument("--topk", type=int, default=None, help="override the preset's k (keys per query)")
    phase = sub.add_parser("phase", help="re-run one phase of an existing run")
    phase.add_argument("name", choices=PHASES)
    phase.add_argument("--run-id", required=True)
    phase.add_argument("--root", default=DEFAULT_ROOT)
    phase.add_argument("--dask-address", default=None, help="patterns: an existing Dask scheduler (default: local)")
    runs = sub.add_parser("runs", help="list the runs under a root")
    runs.add_argument("--root", default=DEFAULT_ROOT)
    return parser


def _run(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset).with_overrides(topk=args.topk)  # validates before anything is written
    params = RunParams(preset=args.preset, root=args.root, run_id=args.run_id, topk=args.topk)
    if args.run_id is not None:
        store = RunStore(args.root, args.run_id)
        if store.exists():
            _preflight(store)
    from sparselens.flows.pipeline import pipeline

    run_id = pipeline(params)
    print(f"run {run_id} ({preset.name}) finished: {RunStore(args.root, run_id).path()}")
    return 0


def _preflight(store: RunStore) -> None:
    from sparselens.runs import check_checkpoints, run_preset

    check_checkpoints(store, run_preset(store))


def _phase(args: argparse.Namespace) -> int:
    store = RunStore(args.root, args.run_id)
    store.require_exists()
    if args.name == "train":
        _preflight(store)
    from sparselens.flows import phase_flow

    flow, params_cls = phase_flow(args.name)
    extra = {"dask_address": args.dask_address} if args.name == "patterns" and args.dask_address else {}
    flow(params_cls(run_id=args.run_id, root=args.root, **extra))
    print(f"phase {args.name} of run {args.run_id} finished: {store.path()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "phase":
            return _phase(args)
        print("\n".join(list_runs(args.root)) or f"no runs under {args.root}")
        return 0
    except USER_ERRORS as err:
        print(f"sparselens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
