"""`sparselens` command line: run the whole pipeline, or re-run one phase of an existing run.

    sparselens run [--preset quick] [--root DIR] [--run-id ID] [--topk K] [--set SECTION.FIELD=VALUE ...]
    sparselens phase train|evaluate|capture|interpret|patterns|optimize|benchmark|monitor --run-id ID [--root DIR]
                     [--set FIELD=VALUE ...] [--dask-address ADDR] [--fresh] [--kernel-backend reference|cpu|triton]
    sparselens generate --run-id ID --model NAME --prompt TEXT --max-new-tokens N [--temperature T --top-p P --seed S]
    sparselens runs [--root DIR]

Inputs are checked before Prefect starts, so a bad preset, k, setting, run id or checkpoint gives one clear
error, exit code 2 and no new files. `sparselens phase monitor` exits 3 when the champion regressed (0 when it
holds).
A run shows a progress bar per long step (on a terminal; plain lines every
30 s otherwise), keeps Prefect's and Dask's own logging at warning level unless `-v` is given, and ends with a short
summary of what it found (loss ratios with intervals, recall against the oracle, task accuracy, the report's path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning made steps up to 100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sparselens.benchmark.generate import GenerationError
from sparselens.config import PHASE_PARAMS, PHASE_SECTIONS, PHASES, ConfigError, RunParams
from sparselens.storage import (
    DEFAULT_ROOT,
    CorruptCheckpointError,
    ModelNotFoundError,
    RunNotFoundError,
    RunStore,
    list_runs,
)
from sparselens.training import StageNotDoneError, TrainingDivergedError

KERNEL_PHASES = ("benchmark", "monitor")  # phases whose models --kernel-backend sets
EXIT_REGRESSED = 3  # `phase monitor` found the champion regressed
USER_ERRORS = (
    ConfigError,
    RunNotFoundError,
    ModelNotFoundError,
    GenerationError,
    CorruptCheckpointError,
    StageNotDoneError,
    TrainingDivergedError,
    FileExistsError,
)
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the first start migrates a database (~20 s)
}
QUIET_ENV = {  # the terminal's share of Prefect's and Dask's logging (the Prefect UI still gets every task log)
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "DASK_LOGGING__DISTRIBUTED": "warning",  # this process and the Dask workers it starts
}
VERBOSE_HELP = "show Prefect's and Dask's own INFO logging (flow and task states, cluster events) instead of bars"
SET_HELP = "a config value as KEY=VALUE (repeatable); VALUE is JSON (2, 0.5, [32, 64], null) or else a string"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparselens", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create a run (or resume one) and execute the whole pipeline")
    run.add_argument("--preset", default=None, help="tiny (tests), quick (2-core CPU, default), full (GPU)")
    run.add_argument("--root", default=DEFAULT_ROOT, help="run store root: a path or an fsspec URL")
    run.add_argument("--run-id", default=None, help="run id (default: <preset>-<timestamp>)")
    run.add_argument("--topk", type=int, default=None, help="override the preset's k (keys per query)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=SET_HELP)
    run.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    phase = sub.add_parser("phase", help="re-run one phase of an existing run")
    phase.add_argument("name", choices=PHASES)
    phase.add_argument("--run-id", required=True)
    phase.add_argument("--root", default=DEFAULT_ROOT)
    phase.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=SET_HELP)
    phase.add_argument("--dask-address", default=None, help="patterns: an existing Dask scheduler (default: local)")
    phase.add_argument("--fresh", action="store_true", help="capture: drop the run's earlier capture first")
    phase.add_argument(
        "--kernel-backend",
        choices=("reference", "cpu", "triton"),
        default=None,
        help="benchmark, monitor: run the phase's models on these kernels (recorded as a setting)",
    )
    gen = sub.add_parser("generate", help="continue a prompt with a run's model, streaming bytes to stdout")
    gen.add_argument("--run-id", required=True)
    gen.add_argument("--root", default=DEFAULT_ROOT)
    gen.add_argument("--model", required=True, help="dense, dsa, a Phase 3 candidate, or champion")
    gen.add_argument("--prompt", required=True, help="text to continue (UTF-8)")
    gen.add_argument("--max-new-tokens", type=int, required=True, help="bytes to generate")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    gen.add_argument("--seed", type=int, default=0)
    phase.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
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

    t0 = time.perf_counter()
    with _progress(args.verbose):
        run_id = pipeline(params)
    store = RunStore(args.root, run_id)
    print(f"\nrun {run_id} ({preset.name}) finished in {_duration(time.perf_counter() - t0)}: {store.path()}")
    print(_findings(store, preset.train.seq_len))
    return 0


def _kernel_backend(args: argparse.Namespace) -> dict[str, Any]:
    """--kernel-backend as the phase's `kernel_backend` setting; refused where it cannot run or does not apply."""
    if args.kernel_backend is None:
        return {}
    if args.name not in KERNEL_PHASES:
        raise ConfigError(f"--kernel-backend applies to {' and '.join(KERNEL_PHASES)}, not to phase {args.name!r}")
    import torch

    from sparselens.kernels import resolve_backend

    try:  # the run store loads models onto the CPU
        resolve_backend("sparse_attention", torch.device("cpu"), args.kernel_backend)
    except ValueError as err:
        raise ConfigError(f"--kernel-backend {args.kernel_backend}: {err}") from None
    return {"kernel_backend": args.kernel_backend}


def _phase(args: argparse.Namespace) -> int:
    from sparselens.runs import check_checkpoints, phase_preset, run_preset

    store = RunStore(args.root, args.run_id)
    store.require_exists()
    extra = {"dask_address": args.dask_address} if args.name == "patterns" and args.dask_address else {}
    extra |= {"fresh": True} if args.name == "capture" and args.fresh else {}
    settings = phase_settings(args.name, args.set) | _kernel_backend(args)
    params = PHASE_PARAMS[args.name](run_id=args.run_id, root=args.root, settings=settings, **extra)
    phase_preset(store, args.name, params.overrides())  # validates the overrides before anything is written
    if args.name == "train":
        check_checkpoints(store, run_preset(store))
    if args.name == "monitor":
        store.champion_name()  # no champion yet: say so before any flow starts
    from sparselens.flows import phase_flow

    flow, _ = phase_flow(args.name)
    t0 = time.perf_counter()
    with _progress(args.verbose):
        result = flow(params)
    if args.name == "monitor":
        print(f"monitor of run {args.run_id}: champion {result['champion']} {result['verdict']}")
        return EXIT_REGRESSED if result["regressed"] else 0
    print(f"\nphase {args.name} of run {args.run_id} finished in {_duration(time.perf_counter() - t0)}: {store.path()}")
    if args.name == "evaluate":
        print(_findings(store, run_preset(store).train.seq_len))
    elif store.fs.exists(f"{store.run_dir}/report.html"):
        print(f"Report: {store.path('report.html')}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from sparselens.benchmark.generate import check_request, generate

    store = RunStore(args.root, args.run_id)
    store.require_exists()
    model = store.load_model(args.model)
    prompt = args.prompt.encode("utf-8")
    check_request(model, len(prompt), args.max_new_tokens, args.temperature, args.top_p)  # before any output
    out = sys.stdout.buffer
    for token in generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed):
        out.write(bytes([token]))
        out.flush()
    out.write(b"\n")
    out.flush()
    return 0


def quiet_logging(verbose: bool) -> None:
    """Prefect's console and Dask's loggers at WARNING (INFO with `verbose`), here and in the processes started
    from here; a level the user set in the environment is kept."""
    for key, value in QUIET_ENV.items():
        if verbose:
            os.environ[key] = "INFO" if key.startswith("PREFECT") else "info"
        else:
            os.environ.setdefault(key, value)
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("distributed").setLevel(level)  # when Dask was imported before the environment was set
    if "prefect" in sys.modules:
        from prefect.logging.handlers import PrefectConsoleHandler

        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(level)


def _progress(verbose: bool) -> contextlib.AbstractContextManager:
    """Terminal progress bars while a flow runs (not with `-v`, whose log lines already say it)."""
    if verbose:
        return contextlib.nullcontext()
    from sparselens.tasks.progress import terminal_display

    return terminal_display()


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _findings(store: RunStore, train_seq_len: int) -> str:
    """What the run found, in a few lines (sparselens.viz.eval_report.run_summary_text)."""
    from sparselens.viz.eval_report import run_summary_text

    report = store.path("report.html") if store.fs.exists(f"{store.run_dir}/report.html") else None
    return run_summary_text(store, train_seq_len, report)


def main(argv: list[str] | None = None) -> int:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    quiet_logging(args.verbose)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "phase":
            return _phase(args)
        if args.command == "generate":
            return _generate(args)
        print("\n".join(list_runs(args.root)) or f"no runs under {args.root}")
        return 0
    except USER_ERRORS as err:
        print(f"sparselens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
