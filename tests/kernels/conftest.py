"""Kernel test setup: Triton runs in its interpreter on CPU-only machines, outputs start poisoned, seeds are fixed,
and the compiled CPU kernels must load unless the torch fallback is asked for.

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


@pytest.fixture(autouse=True, scope="session")
def _compiled_kernels_or_intended_fallback():
    """Without a C compiler the CPU backends quietly fall back to torch, and every cpu test would then test the
    fallback only: fail instead, unless SPARSELENS_NO_NATIVE=1 (or SPARSELENS_CPU_ISA=torch) says that is meant."""
    from sparselens.kernels import _native

    if _native.library() is None and _native.selected_isa() == "torch" and not _fallback_intended():
        pytest.fail(
            f"compiled CPU kernels unavailable ({_native.unavailable_reason()}): the cpu tests would only test the "
            "torch fallback. Install a C compiler (gcc), or set SPARSELENS_NO_NATIVE=1 to test the fallback on purpose"
        )


@pytest.fixture
def compiled():
    """For tests of the compiled kernels themselves: skipped when the torch fallback is in force on purpose."""
    from sparselens.kernels import _native

    if _native.library() is None:
        pytest.skip(f"compiled CPU kernels not in use: {_native.unavailable_reason()}")


def _fallback_intended() -> bool:
    return os.environ.get("SPARSELENS_NO_NATIVE") == "1" or os.environ.get("SPARSELENS_CPU_ISA", "") == "torch"


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
