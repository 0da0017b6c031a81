"""`sparselens` command line: run the whole pipeline, or re-run one phase of an existing run.

    sparselens run --preset quick [--root DIR] [--run-id ID] [--topk K]
    sparselens phase train|evaluate|capture|interpret|patterns --run-id ID [--root DIR] [--dask-address ADDR]
    sparselens phase benchmark|monitor --run-id ID [--root DIR] [--kernel-backend reference|cpu|triton]
    sparselens generate --run-id ID --model NAME --prompt TEXT --max-new-tokens N [--temperature T --top-p P --seed S]
    sparselens runs [--root DIR]

`sparselens phase monitor` exits 3 when the champion regressed (0 when it holds).

Inputs are checked before Prefect starts, so a bad preset, k, run id or checkpoint gives one clear error, a
non-zero exit and no new files.
"""

from __future__ import annotations

import argparse
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning made steps up to 100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sparselens.benchmark.generate import GenerationError
from sparselens.config import ConfigError, RunParams, get_preset
from sparselens.storage import (
    DEFAULT_ROOT,
    CorruptCheckpointError,
    ModelNotFoundError,
    RunNotFoundError,
    RunStore,
    list_runs,
)
from sparselens.training import StageNotDoneError, TrainingDivergedError

PHASES = ("train", "evaluate", "capture", "interpret", "patterns")  # = sparselens.flows.PHASES, without Prefect
PHASE4 = {  # Phase 4 flows: module, flow, parameter model; they take --kernel-backend
    "benchmark": ("sparselens.flows.benchmark", "benchmark", "BenchmarkParams"),
    "monitor": ("sparselens.flows.monitor", "monitor", "MonitorParams"),
}
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparselens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create a run and execute the whole pipeline")
    run.add_argument("--preset", default="quick", help="tiny (tests), quick (2-core CPU), full (GPU)")
    run.add_argument("--root", default=DEFAULT_ROOT, help="run store root: a path or an fsspec URL")
    run.add_argument("--run-id", default=None, help="run id (default: <preset>-<timestamp>)")
    run.add_argument("--topk", type=int, default=None, help="override the preset's k (keys per query)")
    phase = sub.add_parser("phase", help="re-run one phase of an existing run")
    phase.add_argument("name", choices=PHASES + tuple(PHASE4))
    phase.add_argument("--run-id", required=True)
    phase.add_argument("--root", default=DEFAULT_ROOT)
    phase.add_argument("--dask-address", default=None, help="patterns: an existing Dask scheduler (default: local)")
    phase.add_argument("--kernel-backend", choices=("reference", "cpu", "triton"), default=None,
                       help="benchmark, monitor: run the phase's models on these kernels")  # fmt: skip
    gen = sub.add_parser("generate", help="continue a prompt with a run's model, streaming bytes to stdout")
    gen.add_argument("--run-id", required=True)
    gen.add_argument("--root", default=DEFAULT_ROOT)
    gen.add_argument("--model", required=True, help="dense, dsa, a Phase 3 candidate, or champion")
    gen.add_argument("--prompt", required=True, help="text to continue (UTF-8)")
    gen.add_argument("--max-new-tokens", type=int, required=True, help="bytes to generate")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    gen.add_argument("--seed", type=int, default=0)
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
    if args.name in PHASE4:
        return _phase4(args, store)
    if args.kernel_backend is not None:
        raise ConfigError(f"--kernel-backend applies to {' and '.join(PHASE4)}, not to phase {args.name!r}")
    from sparselens.flows import phase_flow

    flow, params_cls = phase_flow(args.name)
    extra = {"dask_address": args.dask_address} if args.name == "patterns" and args.dask_address else {}
    flow(params_cls(run_id=args.run_id, root=args.root, **extra))
    print(f"phase {args.name} of run {args.run_id} finished: {store.path()}")
    return 0


def _phase4(args: argparse.Namespace, store: RunStore) -> int:
    from importlib import import_module

    import torch

    from sparselens.kernels import resolve_backend

    if args.kernel_backend is not None:
        try:  # the run store loads models onto the CPU
            resolve_backend("sparse_attention", torch.device("cpu"), args.kernel_backend)
        except ValueError as err:
            raise ConfigError(f"--kernel-backend {args.kernel_backend}: {err}") from None
    if args.name == "monitor":
        store.champion_name()  # no champion yet: say so before any flow starts
    module, flow_name, params_name = PHASE4[args.name]
    module = import_module(module)
    params = getattr(module, params_name)(run_id=args.run_id, root=args.root, kernel_backend=args.kernel_backend)
    result = getattr(module, flow_name)(params)
    if args.name == "monitor":
        print(f"monitor of run {args.run_id}: champion {result['champion']} {result['verdict']}")
        return EXIT_REGRESSED if result["regressed"] else 0
    print(f"phase {args.name} of run {args.run_id} finished: champion {result['champion']} ({store.path()})")
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


def main(argv: list[str] | None = None) -> int:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
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
