"""The commit protocol of tables on object stores: writes killed half-way leave the previous version whole.

Runs against the test S3 server (moto, own process) and, for comparison, local disk, where the same kills hit
the temporary-directory-then-rename protocol.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import textwrap

import duckdb
import pandas as pd
import polars as pl
import pytest

from sparselens.storage import RunStore
from sparselens.storage import commit as cm

KILLED_WRITE = textwrap.dedent("""
    import io, os, signal, sys
    import pandas as pd
    from sparselens.storage import RunStore, atomic, commit, tables
    root, where, rows = sys.argv[1], sys.argv[2], pd.read_json(io.StringIO(sys.argv[3]))
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "after_first_object":  # one data object of the new version is written, then the process dies
        write = tables._write_files
        def first_then_die(fs, directory, table, cols, basename):
            write(fs, directory, table.slice(0, 1), cols, basename)
            die()
        tables._write_files = first_then_die
    elif where == "before_commit":  # every data object written, the commit (record or rename) never happens
        commit.publish = die
        atomic.replace_directory = die
    elif where == "before_sweep":  # committed, but the previous version's objects are still there
        commit.sweep = die
    RunStore(root, "r1").write_table("eval_loss", rows, partition_cols=["seq_len"])
""")


def eval_rows(loss: float, n: int = 8) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["r1"] * n,
            "model": ["dense", "dsa"] * (n // 2),
            "content_type": ["code"] * n,
            "seq_len": [64 * (1 + i % 4) for i in range(n)],  # four partitions: several data objects per write
            "train_seq_len": [64] * n,
            "length_ratio": [1.0 + i % 4 for i in range(n)],
            "n_samples": [2] * n,
            "loss": [loss + i for i in range(n)],
            "bits_per_byte": [1.5] * n,
            "loss_low": [loss + i - 0.1 for i in range(n)],
            "loss_high": [loss + i + 0.1 for i in range(n)],
        }
    )


def losses(frame: pd.DataFrame) -> list[float]:
    return sorted(frame["loss"].tolist())


def kill_a_write(root: str, where: str, rows: pd.DataFrame) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, root, where, rows.to_json()], env=dict(os.environ), timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, f"the writer was meant to die by SIGKILL, got {proc.returncode}"


def committed_read_by_engines(store: RunStore, name: str) -> dict[str, list[float]]:
    """The table's loss column as pandas (RunStore), DuckDB and polars see it through its committed files."""
    files = store.table_files(name)
    con = duckdb.connect()
    if not files[0].startswith("/"):
        import fsspec

        con.register_filesystem(fsspec.filesystem("s3"))
    duck = con.execute("select loss from read_parquet($1, hive_partitioning = true)", [files]).df()
    polars = pl.scan_parquet(files, hive_partitioning=True).select("loss").collect()
    return {
        "pandas": losses(store.read_table(name)),
        "duckdb": losses(duck),
        "polars": sorted(polars["loss"].to_list()),
    }


@pytest.fixture(params=["local", "s3"])
def store_root(request, tmp_path):
    return str(tmp_path / "data") if request.param == "local" else request.getfixturevalue("s3_root")


@pytest.mark.parametrize("where", ["after_first_object", "before_commit"])
def test_killed_rewrite_leaves_the_previous_table_whole(store_root, where):
    store = RunStore(store_root, "r1")
    store.create({"preset": "tiny"})
    store.write_table("eval_loss", eval_rows(1.0), partition_cols=["seq_len"])
    kill_a_write(store_root, where, eval_rows(100.0))
    if cm.uses_record(store.fs):  # the dead writer's objects are really there, beside the committed ones
        directory = store._p("tables", "eval_loss")
        assert len(cm.data_objects(store.fs, directory)) > len(store.table_files("eval_loss"))
    want = losses(eval_rows(1.0))
    assert committed_read_by_engines(store, "eval_loss") == {"pandas": want, "duckdb": want, "polars": want}
    assert store.list_tables() == ["eval_loss"]

    store.write_table("eval_loss", eval_rows(7.0), partition_cols=["seq_len"])  # the next write sweeps orphans
    assert losses(pd.read_parquet(store.table_path("eval_loss"))) == losses(eval_rows(7.0))  # a plain glob read


def test_write_killed_after_its_commit_is_the_new_version(s3_root):
    store = RunStore(s3_root, "r1")
    store.create({"preset": "tiny"})
    store.write_table("eval_loss", eval_rows(1.0), partition_cols=["seq_len"])
    kill_a_write(s3_root, "before_sweep", eval_rows(100.0))
    want = losses(eval_rows(100.0))
    assert committed_read_by_engines(store, "eval_loss") == {"pandas": want, "duckdb": want, "polars": want}
    directory = store._p("tables", "eval_loss")
    assert len(cm.data_objects(store.fs, directory)) == 2 * len(store.table_files("eval_loss"))  # old ones linger


def test_commit_record_lists_the_files_schema_and_partitions(s3_root):
    store = RunStore(s3_root, "r1")
    store.create({})
    store.write_table("eval_loss", eval_rows(1.0), partition_cols=["seq_len"])
    directory = store._p("tables", "eval_loss")
    record = json.loads(store.fs.cat_file(posixpath.join(directory, cm.RECORD)))
    assert record["format"] == cm.FORMAT and record["partition_cols"] == ["seq_len"]
    assert sorted(record["files"]) == sorted(cm.data_objects(store.fs, directory))
    assert all(f.startswith("seq_len=") and f"part-{record['write_id']}-" in f for f in record["files"])
    assert cm.read_commit(store.fs, directory).schema.field("seq_len").type == "int32"
    store.fs.rm(posixpath.join(directory, cm.RECORD))  # without its record a table does not exist
    assert not store.table_exists("eval_loss") and store.list_tables() == []
    store.write_table("eval_loss", eval_rows(2.0))
    store.delete_table("eval_loss")
    assert not store.table_exists("eval_loss") and not store.fs.exists(directory)


def test_single_files_join_the_table_only_through_write_part(s3_root):
    from sparselens.storage.schemas import CAPTURE_PARTITIONS, SCHEMAS

    store = RunStore(s3_root, "r1")
    store.create({})
    store.write_table("indexer_stats", SCHEMAS["indexer_stats"].empty_table(), partition_cols=CAPTURE_PARTITIONS)
    first = eval_rows(1.0)  # any Parquet bytes will do to show what is committed; the rows are not read here
    data = first.to_parquet()
    path = posixpath.join(store._p("tables", "indexer_stats"), "model=dsa/seq_len=64/layer=0/part-00000.parquet")
    store.fs.pipe_file(path, data)  # an object written by a capture that died before its commit
    assert not store.part_exists(path)
    store.write_part(path, data)
    assert store.part_exists(path)
    assert store.table_files("indexer_stats") == [store.fs.unstrip_protocol(path)]
    with pytest.raises(ValueError, match="inside a table directory"):
        store.write_part(store._p("tables", "x.parquet"), data)
