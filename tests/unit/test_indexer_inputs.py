"""benchmarks/indexer_inputs.py: the captured indexer inputs are the ones the model used (its selection rebuilt)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sparselens import kernels
from sparselens.models import ModelConfig, build_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "indexer_inputs.py"


def test_captured_inputs_rebuild_the_models_selection():
    spec = importlib.util.spec_from_file_location("indexer_inputs_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = ModelConfig(attention="dsa", topk=8, n_layers=2, d_model=32, n_heads=2, max_seq_len=128,
                      indexer_heads=2, indexer_dim=8, kernel_backend="reference")  # fmt: skip
    model = build_model(cfg).eval()
    tokens = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    captured = script.capture_indexer_inputs(model, tokens)
    assert sorted(captured) == [0, 1]
    for got in captured.values():
        assert got["q"].shape == (1, 40, 2, 8) and got["k"].shape == (1, 40, 8) and got["w"].shape == (1, 40, 2)
        again = kernels.indexer_topk(got["q"], got["k"], got["w"], 8, causal=True, backend="reference")
        assert torch.equal(again, got["idx"])
    assert "project" not in vars(model.blocks[0].indexer)  # the class methods are back
    dense = build_model(ModelConfig(attention="dense", n_layers=1, d_model=32, n_heads=2, max_seq_len=64)).eval()
    with pytest.raises(ValueError, match="no DSA layer"):
        script.capture_indexer_inputs(dense, tokens)
