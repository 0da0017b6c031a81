"""The child process of rss.py: `python -m sparselens.benchmark.rss_child ROOT RUN_ID MODEL LENGTH DECODE THREADS
[BACKEND]` prints {"baseline_mb", "peak_mb"} of one model's prefill + decode as its last line."""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from sparselens.benchmark.models import load_variant
from sparselens.benchmark.timing import held_out_tokens
from sparselens.storage import RunStore

MIB = 1024.0  # ru_maxrss is in KiB on Linux


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("root", "run_id", "model"):
        parser.add_argument(name)
    for name in ("length", "decode_tokens", "threads"):
        parser.add_argument(name, type=int)
    parser.add_argument("kernel_backend", nargs="?", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = RunStore(args.root, args.run_id)
    model = load_variant(store, args.model, args.length + args.decode_tokens, args.kernel_backend)
    tokens = held_out_tokens(args.length + args.decode_tokens)[0]  # [1, L + n]
    baseline = _max_rss_mb()
    with torch.no_grad():
        cache = model.new_cache(1)
        model(tokens[:, : args.length], cache=cache)
        for t in range(args.length, args.length + args.decode_tokens):
            model(tokens[:, t : t + 1], cache=cache)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": _max_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
