"""Run store: tables, atomic writes, checkpoints, models and the manifest, on local disk, memory:// and S3."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import uuid

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch
from torch import nn

from sparselens.storage import (
    SCHEMAS,
    CorruptCheckpointError,
    ModelNotFoundError,
    RunNotFoundError,
    RunStore,
    TableNotFoundError,
    atomic_directory,
    atomic_write_bytes,
    list_runs,
    register_schema,
)
from sparselens.storage import atomic as atomic_mod
from sparselens.storage import tables as tables_mod


@pytest.fixture(params=["local", "memory", "s3"])
def root(request, tmp_path):
    """A store root on local disk, in fsspec's memory filesystem (removed afterwards) or in a bucket of the test
    S3 server (both object stores: tables published by a commit record)."""
    if request.param == "local":
        yield str(tmp_path / "data")
        return
    if request.param == "s3":
        yield request.getfixturevalue("s3_root")
        return
    url = f"memory://sparselens-test-{uuid.uuid4().hex[:8]}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.fixture
def store(root):
    s = RunStore(root, "r1")
    s.create({"preset": "quick", "seed": 0})
    return s


def eval_rows(n: int = 4, loss: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["r1"] * n,
            "model": ["dense", "dsa"] * (n // 2),
            "content_type": ["code"] * n,
            "seq_len": [128 * (1 + i % 2) for i in range(n)],
            "train_seq_len": [128] * n,
            "length_ratio": [1.0 + i % 2 for i in range(n)],
            "n_samples": [8] * n,
            "loss": [loss + i for i in range(n)],
            "bits_per_byte": [1.5] * n,
            "loss_low": [loss + i - 0.1 for i in range(n)],
            "loss_high": [loss + i + 0.1 for i in range(n)],
        }
    )


def train_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["r1"] * 3,
            "model": ["dsa"] * 3,
            "stage": ["warmup", "warmup", "sparse"],
            "step": [0, 1, 0],
            "loss": [3.0, 2.5, 2.4],
            "lm_loss": [3.0, 2.5, 2.3],
            "kl_loss": [None, 0.2, float("nan")],
            "lr": [1e-3] * 3,
            "tokens_seen": [512, 1024, 512],
            "wall_s": [0.1, 0.2, 0.3],
        }
    )


def visible_entries(fs, directory: str) -> list[str]:
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(directory, detail=False))


def test_declared_tables_round_trip_with_declared_types(store):
    store.write_table("eval_loss", eval_rows())
    store.write_table("train_log", train_rows())
    got = store.read_table("eval_loss")
    pd.testing.assert_frame_equal(got.astype(eval_rows().dtypes.to_dict()), eval_rows(), check_dtype=True)
    assert str(got["seq_len"].dtype) == "int32" and str(got["n_samples"].dtype) == "int32"
    log = store.read_table("train_log")
    assert log["kl_loss"].isna().tolist() == [True, False, True]
    assert store.list_tables() == ["eval_loss", "train_log"]
    assert store.table_exists("eval_loss") and not store.table_exists("indexer_recall")


def test_column_order_and_extra_types_are_cast(store):
    df = eval_rows()[list(reversed(eval_rows().columns))].astype({"seq_len": "int64", "n_samples": "int16"})
    store.write_table("eval_loss", df)
    got = store.read_table("eval_loss", columns=["seq_len", "loss"])
    assert list(got.columns) == ["seq_len", "loss"] and str(got["seq_len"].dtype) == "int32"


def test_undeclared_table_keeps_inferred_schema(store):
    df = pd.DataFrame({"layer": [0, 1], "head": [2, 3], "entropy": [0.5, 0.25], "kind": ["local", "sink"]})
    store.write_table("head_features", df)
    pd.testing.assert_frame_equal(store.read_table("head_features").astype(df.dtypes.to_dict()), df)
    with pytest.raises(ValueError, match="snake_case"):
        store.write_table("head_features", pd.DataFrame({"Recall@K": [1.0]}))


def test_schema_names_missing_and_extra_columns(store):
    df = eval_rows().drop(columns=["bits_per_byte"]).assign(surprise=1)
    with pytest.raises(ValueError, match=r"missing columns \['bits_per_byte'\], unexpected columns \['surprise'\]"):
        store.write_table("eval_loss", df)
    assert not store.table_exists("eval_loss")


def test_schema_rejects_bad_types_and_null_keys(store):
    with pytest.raises(ValueError, match="column 'seq_len'"):
        store.write_table("eval_loss", eval_rows().assign(seq_len=["long"] * 4))
    with pytest.raises(ValueError, match="column 'step' has 1 null"):
        store.write_table("train_log", train_rows().assign(step=[0, None, 2]))
    with pytest.raises(TypeError, match="DataFrame or pyarrow Table"):
        store.write_table("eval_loss", [1, 2, 3])


def test_arrow_input_and_filters(store):
    store.write_table("eval_loss", pa.Table.from_pandas(eval_rows(6), preserve_index=False))
    got = store.read_table("eval_loss", filters=[("model", "=", "dsa"), ("seq_len", ">", 128)])
    assert len(got) == 3 and set(got["model"]) == {"dsa"}
    assert len(store.read_table("eval_loss", filters=ds.field("seq_len") == 128)) == 3
    with pytest.raises(ValueError, match="no columns"):
        store.read_table("eval_loss", columns=["nope"])


def test_partitioned_write_reads_back_with_pyarrow_dataset(store):
    rows = eval_rows(6).assign(model=["dense", "dsa", "dsa", "dense", "dense", "dsa"])
    store.write_table("eval_loss", rows, partition_cols=["seq_len", "model"])
    fs, directory = store.fs, store._p("tables", "eval_loss")
    assert sorted(e for e in visible_entries(fs, directory) if not e.startswith("_")) == ["seq_len=128", "seq_len=256"]
    dataset = ds.dataset(directory, filesystem=fs, format="parquet", partitioning="hive")
    assert dataset.count_rows() == 6
    assert dataset.to_table(filter=ds.field("seq_len") == 256).num_rows == 3
    got = store.read_table("eval_loss", filters=[("seq_len", "=", 256)])
    assert got.columns.tolist() == SCHEMAS["eval_loss"].names and str(got["seq_len"].dtype) == "int32"
    assert len(got) == 3 and set(got["model"]) == {"dense", "dsa"}


def test_append_adds_files_and_checks_schema(store):
    store.append_table("eval_loss", eval_rows(2), partition_cols=["seq_len"])
    store.append_table("eval_loss", eval_rows(4, loss=10.0))
    assert len(store.read_table("eval_loss")) == 6
    with pytest.raises(ValueError, match="missing columns"):
        store.append_table("eval_loss", eval_rows().drop(columns=["loss"]))
    table_dir = store._p("tables")
    assert visible_entries(store.fs, table_dir) == ["eval_loss"]


def test_rewrite_replaces_whole_table_and_removes_stale_temps(store):
    store.write_table("eval_loss", eval_rows(6), partition_cols=["seq_len"])
    stale = posixpath.join(store._p("tables"), ".eval_loss.tmp-deadbeef")
    store.fs.makedirs(stale, exist_ok=True)
    store.fs.pipe_file(posixpath.join(stale, "part-0.parquet"), b"junk")
    store.write_table("eval_loss", eval_rows(2, loss=7.0))
    got = store.read_table("eval_loss")
    assert got["loss"].tolist() == [7.0, 8.0]
    assert visible_entries(store.fs, store._p("tables")) == ["eval_loss"]


@pytest.mark.parametrize("swap", ["exchange", "rename_aside"])
def test_failed_rewrite_keeps_old_table_and_leaves_no_temps(store, monkeypatch, swap):
    if swap == "rename_aside":
        monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)
    store.write_table("eval_loss", eval_rows(4, loss=1.0))
    store.write_table("eval_loss", eval_rows(4, loss=2.0))
    real_write = tables_mod._write_files

    def write_then_die(fs, directory, table, cols, basename):
        real_write(fs, directory, table.slice(0, 1), cols, basename)
        raise OSError("disk full")

    monkeypatch.setattr(tables_mod, "_write_files", write_then_die)
    with pytest.raises(OSError, match="disk full"):
        store.write_table("eval_loss", eval_rows(4, loss=99.0))
    assert store.read_table("eval_loss")["loss"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert visible_entries(store.fs, store._p("tables")) == ["eval_loss"]
    assert store.list_tables() == ["eval_loss"]


def test_atomic_write_bytes_failure_keeps_old_file(tmp_path, monkeypatch):
    target = str(tmp_path / "sub" / "manifest.json")
    atomic_write_bytes(None, target, b"old")

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic_mod.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_bytes(None, target, b"new")
    assert open(target, "rb").read() == b"old"
    assert os.listdir(tmp_path / "sub") == ["manifest.json"]


def test_atomic_directory_publishes_only_on_success(root):
    fs, base = fsspec.core.url_to_fs(root)
    target = posixpath.join(base, "charts")
    with atomic_directory(fs, target) as tmp:
        fs.pipe_file(posixpath.join(tmp, "a.svg"), b"1")
        assert not fs.exists(target)
    with pytest.raises(RuntimeError), atomic_directory(fs, target) as tmp:
        fs.pipe_file(posixpath.join(tmp, "b.svg"), b"2")
        raise RuntimeError("chart failed")
    assert visible_entries(fs, target) == ["a.svg"]
    assert visible_entries(fs, base) == ["charts"]


def test_checkpoints_keep_latest_and_resume(store):
    assert store.latest_checkpoint("dsa", "warmup") is None
    for step in (1, 5, 10, 120):
        path = store.save_checkpoint("dsa", "warmup", step, {"step": step, "w": torch.full((2,), float(step))})
    assert path.endswith("checkpoints/dsa/warmup/step_000120.pt")
    assert store.checkpoint_steps("dsa", "warmup") == [10, 120]
    step, state = store.latest_checkpoint("dsa", "warmup")
    assert step == 120 and torch.equal(state["w"], torch.full((2,), 120.0))
    store.save_checkpoint("dsa", "sparse", 3, {"x": 1}, keep=1)
    store.clear_checkpoints("dsa", "warmup")
    assert store.checkpoint_steps("dsa", "warmup") == [] and store.checkpoint_steps("dsa", "sparse") == [3]


def test_truncated_checkpoint_raises_corrupt_error(store):
    path = store.save_checkpoint("dense", "pretrain", 7, {"w": torch.randn(64, 64)})
    data = store.fs.cat_file(store._p("checkpoints", "dense", "pretrain", "step_000007.pt"))
    store.fs.pipe_file(store._p("checkpoints", "dense", "pretrain", "step_000007.pt"), data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as err:
        store.latest_checkpoint("dense", "pretrain")
    assert "step_000007.pt" in str(err.value) and "Delete that file" in str(err.value)
    assert "--fresh" not in str(err.value)  # no flag restarts a training stage; the hint named one that did not exist
    assert path.endswith("step_000007.pt")


def test_manifest_records_config_versions_and_phases(store):
    manifest = store.read_manifest()
    assert manifest["run_id"] == "r1" and manifest["config"] == {"preset": "quick", "seed": 0}
    assert manifest["versions"]["python"] and manifest["versions"]["torch"]
    assert "git_commit" in manifest and manifest["phases"] == {}
    store.update_phase("train", "running")
    entry = store.update_phase("train", "completed", seconds=12.34567, steps=40)
    assert entry["status"] == "completed" and entry["seconds"] == 12.346 and entry["steps"] == 40
    assert "started_at" in entry
    with pytest.raises(ValueError, match="running"):
        store.update_phase("train", "done")
    store.create({"preset": "quick", "seed": 1})
    again = store.read_manifest()
    assert again["config"]["seed"] == 1 and again["phases"]["train"]["status"] == "completed"
    assert again["created_at"] == manifest["created_at"]
    with pytest.raises(FileExistsError, match="--run-id"):
        store.create({}, exist_ok=False)


def test_config_dataclass_is_serialised(root):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        d_model: int = 32
        lengths: tuple[int, ...] = (128, 256)

    store = RunStore(root, "dc")
    store.create({"model": Cfg(), "root": __import__("pathlib").Path("/x")})
    assert store.read_manifest()["config"] == {"model": {"d_model": 32, "lengths": [128, 256]}, "root": "/x"}


def test_run_not_found_says_how_to_create_it(store, root):
    missing = RunStore(root, "nope")
    assert not missing.exists()
    with pytest.raises(RunNotFoundError) as err:
        missing.require_exists()
    msg = str(err.value)
    assert "'nope'" in msg and "sparselens run --preset quick --run-id nope" in msg and "r1" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(RunNotFoundError):
        missing.read_table("eval_loss")
    assert list_runs(root) == ["r1"]


def test_missing_table_lists_existing(store):
    store.write_table("eval_loss", eval_rows())
    with pytest.raises(TableNotFoundError, match=r"no table 'indexer_recall'.*\['eval_loss'\]"):
        store.read_table("indexer_recall")


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    d_model: int = 4
    attention: str = "dense"


class FakeModel(nn.Module):
    def __init__(self, cfg: FakeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)


def test_save_and_load_model(store):
    model = FakeModel(FakeConfig(d_model=3, attention="dsa"))
    store.save_model("dsa", model)
    assert store.has_model("dsa") and not store.has_model("dense") and store.list_models() == ["dsa"]
    loaded = store.load_model("dsa")  # rebuilt as the classes the file names: storage knows no model
    assert type(loaded) is FakeModel and loaded.cfg == model.cfg and not loaded.training
    assert torch.equal(loaded.proj.weight, model.proj.weight)
    built = []
    injected = RunStore(
        store.fs.unstrip_protocol(store.root),
        store.run_id,
        builder=lambda cfg: built.append(cfg) or FakeModel(FakeConfig(**cfg)),
    )
    assert torch.equal(injected.load_model("dsa").proj.weight, model.proj.weight)
    assert built == [{"d_model": 3, "attention": "dsa"}]
    with pytest.raises(ModelNotFoundError, match=r"no saved model 'dense'.*\['dsa'\]"):
        store.load_model("dense")


def test_a_model_file_without_its_class_loads_as_the_gpt_it_is(store):
    """Model files written before they named their classes (every run so far) hold a GPT: they load as one."""
    import dataclasses

    from sparselens.models import ModelConfig, build_model
    from sparselens.storage.atomic import atomic_torch_save

    torch.manual_seed(0)
    model = build_model(ModelConfig(attention="dsa", n_layers=1, d_model=16, n_heads=2, max_seq_len=32, topk=4))
    legacy = {"cfg": dataclasses.asdict(model.cfg), "state_dict": model.state_dict()}  # no model_type/config_type
    legacy["cfg"].pop("n_kv_heads")  # nor the fields added since
    legacy["cfg"].pop("plan")
    atomic_torch_save(store.fs, store._model_path("old"), legacy)
    loaded = store.load_model("old")
    assert loaded.cfg == model.cfg
    tokens = torch.randint(0, 256, (1, 9))
    assert torch.equal(loaded(tokens), model.eval()(tokens))
    fake = {"cfg": {"d_model": 3}, "state_dict": FakeModel(FakeConfig(d_model=3)).state_dict()}
    atomic_torch_save(store.fs, store._model_path("fake"), fake)
    injected = RunStore(
        store.fs.unstrip_protocol(store.root), store.run_id, builder=lambda cfg: FakeModel(FakeConfig(**cfg))
    )
    assert injected.load_model("fake").cfg == FakeConfig(d_model=3)


def test_real_model_round_trip(tmp_path):
    from sparselens.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(attention="dsa", n_layers=1, d_model=16, n_heads=2, max_seq_len=32, topk=4)
    model = build_model(cfg).eval()
    store = RunStore(tmp_path, "real")
    store.save_model("dsa", model)
    loaded = store.load_model("dsa")
    tokens = torch.randint(0, cfg.vocab_size, (1, 9))  # [B, T]
    assert loaded.cfg == cfg and not loaded.training
    torch.testing.assert_close(loaded(tokens), model(tokens))  # [B, T, V]


def test_files_and_paths_stay_inside_the_run(store):
    path = store.write_text("charts/loss.svg", "<svg/>")
    assert path == store.path("charts", "loss.svg") and store.read_text("charts/loss.svg") == "<svg/>"
    assert store.url.endswith("/runs/r1") and "://" in store.url
    with pytest.raises(ValueError, match="inside the run"):
        store.write_bytes("../r2/manifest.json", b"x")
    with pytest.raises(ValueError, match="not a valid name"):
        RunStore("memory://x", "../escape")


def test_register_schema_refuses_conflicts():
    schema = pa.schema([pa.field("run_id", pa.string())])
    register_schema("test_only_table", schema)
    assert register_schema("test_only_table", schema) is schema
    with pytest.raises(ValueError, match="already declared"):
        register_schema("test_only_table", pa.schema([pa.field("layer", pa.int32())]))
    del SCHEMAS["test_only_table"]
