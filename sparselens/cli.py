"""`sparselens` command line: run the whole pipeline, or re-run one phase of an existing run.

    sparselens run [--preset quick] [--root DIR] [--run-id ID] [--topk K] [--set SECTION.FIELD=VALUE ...]
    sparselens phase train|evaluate|capture|interpret|patterns --run-id ID [--root DIR] [--set FIELD=VALUE ...]
                     [--dask-address ADDR] [--fresh]
    sparselens runs [--root DIR]

Inputs are checked before Prefect starts, so a bad preset, k, setting, run id or checkpoint gives one clear
error, exit code 2 and no new files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning made steps up to 100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sparselens.config import PHASE_PARAMS, PHASE_SECTIONS, PHASES, ConfigError, RunParams
from sparselens.storage import DEFAULT_ROOT, CorruptCheckpointError, RunNotFoundError, RunStore, list_runs
from sparselens.training import StageNotDoneError, TrainingDivergedError

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
SET_HELP = "a config value as KEY=VALUE (repeatable); VALUE is JSON (2, 0.5, [32, 64], null) or else a string"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparselens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create a run (or resume one) and execute the whole pipeline")
    run.add_argument("--preset", default=None, help="tiny (tests), quick (2-core CPU, default), full (GPU)")
    run.add_argument("--root", default=DEFAULT_ROOT, help="run store root: a path or an fsspec URL")
    run.add_argument("--run-id", default=None, help="run id (default: <preset>-<timestamp>)")
    run.add_argument("--topk", type=int, default=None, help="override the preset's k (keys per query)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=SET_HELP)
    phase = sub.add_parser("phase", help="re-run one phase of an existing run")
    phase.add_argument("name", choices=PHASES)
    phase.add_argument("--run-id", required=True)
    phase.add_argument("--root", default=DEFAULT_ROOT)
    phase.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=SET_HELP)
    phase.add_argument("--dask-address", default=None, help="patterns: an existing Dask scheduler (default: local)")
    phase.add_argument("--fresh", action="store_true", help="capture: drop the run's earlier capture first")
    runs = sub.add_parser("runs", help="list the runs under a root")
    runs.add_argument("--root", default=DEFAULT_ROOT)
    return parser


def parse_settings(items: list[str]) -> dict[str, Any]:
    """`["n_samples=2", "seq_lens=[32, 64]"]` -> {"n_samples": 2, "seq_lens": [32, 64]} (JSON values, else text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. --set n_samples=2")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def section_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["capture.n_samples=2"]` -> {"capture": {"n_samples": 2}}; every key names its section."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_settings(items).items():
        section, dot, field = key.partition(".")
        if not dot:
            raise ConfigError(f"--set {key}=... must name a section, e.g. --set capture.{key}=...")
        out.setdefault(section, {})[field] = value
    return out


def phase_settings(name: str, items: list[str]) -> dict[str, Any]:
    """Settings of phase `name`'s section; a key may carry the section's name (`capture.n_samples`)."""
    section = PHASE_SECTIONS[name]
    out = {}
    for key, value in parse_settings(items).items():
        prefix, dot, field = key.rpartition(".")
        if dot and prefix != section:
            raise ConfigError(f"--set {key}: phase {name!r} changes only its {section!r} section")
        out[field] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from sparselens.runs import check_checkpoints, check_run_config, requested_preset

    overrides = section_settings(args.set)
    store = RunStore(args.root, args.run_id) if args.run_id is not None else None
    if store is not None and store.exists():
        preset = check_run_config(store, args.preset, args.topk, overrides)  # a run keeps its config
        check_checkpoints(store, preset)
    else:
        preset = requested_preset(args.preset, args.topk, overrides)  # validates before anything is written
    params = RunParams(preset=preset.name, root=args.root, run_id=args.run_id, topk=args.topk, overrides=overrides)
    from sparselens.flows.pipeline import pipeline

    run_id = pipeline(params)
    print(f"run {run_id} ({preset.name}) finished: {RunStore(args.root, run_id).path()}")
    return 0


def _phase(args: argparse.Namespace) -> int:
    from sparselens.runs import check_checkpoints, phase_preset, run_preset

    store = RunStore(args.root, args.run_id)
    store.require_exists()
    extra = {"dask_address": args.dask_address} if args.name == "patterns" and args.dask_address else {}
    extra |= {"fresh": True} if args.name == "capture" and args.fresh else {}
    params = PHASE_PARAMS[args.name](
        run_id=args.run_id, root=args.root, settings=phase_settings(args.name, args.set), **extra
    )
    phase_preset(store, args.name, params.overrides())  # validates the overrides before anything is written
    if args.name == "train":
        check_checkpoints(store, run_preset(store))
    from sparselens.flows import phase_flow

    flow, _ = phase_flow(args.name)
    flow(params)
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
