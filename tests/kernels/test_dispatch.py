"""Backend resolution of the public kernel functions."""

import pytest
import torch

from sparselens.kernels import resolve_backend


def test_none_picks_the_device_fast_path():
    assert resolve_backend("sparse_attention", torch.device("cpu")) == "cpu"
    assert resolve_backend("indexer_scores", torch.device("cuda")) == "triton"  # triton is a dependency


def test_none_falls_back_to_the_reference_on_cuda_without_triton(monkeypatch):
    import sparselens.kernels as kernels

    monkeypatch.setattr(kernels, "_triton_importable", lambda: False)
    assert resolve_backend("indexer_scores", torch.device("cuda")) == "reference"


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_explicit_backend_on_cpu(backend):
    assert resolve_backend("topk_indices", torch.device("cpu"), backend) == backend


def test_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="use one of"):
        resolve_backend("indexer_topk", torch.device("cpu"), "cuda")
    with pytest.raises(ValueError, match="move them to the CPU"):
        resolve_backend("indexer_topk", torch.device("cuda"), "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("sparse_attention", torch.device("cpu"), "triton")
