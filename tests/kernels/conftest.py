"""Kernel test setup: Triton runs in its interpreter on CPU-only machines, outputs start poisoned, seeds are fixed.

TRITON_INTERPRET must be set before any `@triton.jit` function is defined. The Triton kernel modules are imported
lazily (on the first `backend="triton"` call), and pytest loads this file before any test runs, so setting the
variable here is early enough; CPU-path tests never import Triton and are unaffected.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sparselens.kernels import _checks  # noqa: E402

TRITON_MODULES = ("sparselens.kernels.indexer_scores.triton", "sparselens.kernels.sparse_attention.triton")


@pytest.fixture(autouse=True)
def _poison_and_seed(monkeypatch):
    monkeypatch.setattr(_checks, "POISON_OUTPUTS", True)
    torch.manual_seed(0)


@pytest.fixture
def triton_device() -> str:
    """Device for Triton tests: CUDA when present, else CPU through the interpreter (skip if it cannot run)."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    compiled = [m for m in TRITON_MODULES if m in sys.modules and not _interpreted(sys.modules[m])]
    if compiled:
        pytest.skip(f"{compiled} were imported before TRITON_INTERPRET=1 was set: run the kernel tests on their own")
    pytest.importorskip("triton")
    return "cpu"


def _interpreted(module) -> bool:
    kernels = [v for k, v in vars(module).items() if k.endswith("_kernel")]
    return all(type(kern).__name__ == "InterpretedFunction" for kern in kernels)
