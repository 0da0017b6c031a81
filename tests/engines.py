"""Read a run's tables with the engines a team already uses (pandas, pyarrow.dataset, dask.dataframe, DuckDB,
polars), the way the README shows, and reduce each read to what can be compared across engines."""

from __future__ import annotations

import duckdb
import fsspec
import pandas as pd
import polars as pl
import pyarrow.dataset as ds

from sparselens.storage import RunStore

ENGINES = ("pandas", "pyarrow", "dask", "duckdb", "polars")


def _duckdb(source: str | list[str]) -> pd.DataFrame:
    con = duckdb.connect()
    remote = source[0] if isinstance(source, list) else source
    if "://" in remote:
        con.register_filesystem(fsspec.filesystem(remote.split("://")[0]))  # e.g. s3fs, configured from the env
    return con.execute("select * from read_parquet($1, hive_partitioning = true)", [source]).df()


def read_by_engine(engine: str, directory: str, files: list[str]) -> pd.DataFrame:
    """Table at `directory` (a path or URL) read by `engine`; DuckDB and polars read `files` (the committed
    files) when given, else the directory's `**/*.parquet`."""
    if engine == "pandas":
        return pd.read_parquet(directory)
    if engine == "pyarrow":
        return ds.dataset(directory, format="parquet", partitioning="hive").to_table().to_pandas()
    if engine == "dask":
        import dask.dataframe as dd

        return dd.read_parquet(directory).compute(scheduler="synchronous")
    source = files or f"{directory}/**/*.parquet"
    if engine == "duckdb":
        return _duckdb(source)
    return pl.scan_parquet(source, hive_partitioning=True).collect().to_pandas()


def summary(frame: pd.DataFrame) -> tuple[int, list[str], float]:
    """(rows, sorted column names, sum of the numeric non-key columns) of a read; comparable across engines."""
    keys = {"run_id", "model", "content_type", "seq_len", "layer", "head", "sample_id"}
    numeric = [c for c in frame.columns if c not in keys and pd.api.types.is_numeric_dtype(frame[c])]
    total = float(sum(pd.to_numeric(frame[c], errors="coerce").astype("float64").fillna(0).sum() for c in numeric))
    return len(frame), sorted(frame.columns), total


def check_every_engine(store: RunStore, strict: bool = False) -> list[str]:
    """Read every table of `store` with every engine and assert each read matches `RunStore.read_table`; with
    `strict`, DuckDB and polars read exactly the committed files (`RunStore.table_files`). Returns the tables."""
    names = store.list_tables()
    for name in names:
        rows, columns, total = summary(store.read_table(name))
        files = store.table_files(name)
        if not files:
            assert rows == 0, name
            continue
        for engine in ENGINES:
            got = summary(read_by_engine(engine, store.table_path(name), files if strict else []))
            assert got[:2] == (rows, columns), (name, engine, got[:2], (rows, columns))
            assert abs(got[2] - total) <= 1e-6 * max(1.0, abs(total)), (name, engine, got[2], total)
    return names
