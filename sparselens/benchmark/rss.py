"""Peak resident memory of one model's prefill + decode, measured in a fresh process (`rss_child.py`).

The child loads the model and its held-out tokens, resets the kernel's peak-RSS mark, runs one prefill of `length`
tokens through a fresh cache and `decode_tokens` one-token steps, and prints `{"baseline_mb": ..., "peak_mb": ...}`
(resident size before the work, and its peak during it) as its last line. A fresh process per model keeps one
model's allocations from hiding another's.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = "sparselens.benchmark.rss_child"


def measure_in_subprocess(
    root: str, run_id: str, model: str, length: int, decode_tokens: int, kernel_backend: str | None, threads: int
) -> dict[str, float]:
    """Run this module in a new interpreter for one model; returns its baseline_mb and peak_mb."""
    cmd = [sys.executable, "-m", CHILD, root, run_id, model, str(length), str(decode_tokens), str(threads)]
    if kernel_backend is not None:
        cmd.append(kernel_backend)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"peak-RSS child for model {model!r} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
