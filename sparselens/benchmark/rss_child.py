"""The child process of rss.py: `python -m sparselens.benchmark.rss_child ROOT RUN_ID MODEL LENGTH DECODE THREADS
[BACKEND]` prints {"baseline_mb", "peak_mb"} of one model's prefill + decode as its last line.

On Linux the kernel's high-water mark (VmHWM) is reset just before the work (`/proc/self/clear_refs`), so the peak
is that of prefill + decode, not of loading the corpora; baseline_mb is the resident size at that moment. Where
the reset is not possible the peak is the process's lifetime maximum (ru_maxrss).
"""

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


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / MIB  # kB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def _peak_mb(reset: bool) -> float:
    hwm = _status_mb("VmHWM") if reset else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


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
    reset = _reset_peak()
    baseline = _status_mb("VmRSS") or _peak_mb(False)
    with torch.no_grad():
        cache = model.new_cache(1)
        model(tokens[:, : args.length], cache=cache)
        for t in range(args.length, args.length + args.decode_tokens):
            model(tokens[:, t : t + 1], cache=cache)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": _peak_mb(reset)}))


if __name__ == "__main__":
    main(sys.argv[1:])
