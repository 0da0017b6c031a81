"""Parquet table schemas, declared once.

Columns are snake_case. Key and count columns are non-nullable; measurement columns are nullable because pandas
NaN (a diverged loss, a metric that does not apply) is stored as null and read back as NaN. Each field carries a
`doc` metadata entry with its meaning and unit, which travels into the Parquet files.

A later phase adds its tables with `register_schema("query_stats", pa.schema([...]))` at import time of its own
module, or by extending `SCHEMAS` below; `RunStore.write_table` validates against whatever is registered and
writes undeclared tables with their inferred schema.
"""

from __future__ import annotations

import re

import pyarrow as pa

_SNAKE = re.compile(r"^[a-z_][a-z0-9_]*$")


def field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    """A schema field with its documentation (meaning, unit) in the field metadata under `doc`."""
    if not _SNAKE.match(name):
        raise ValueError(f"column {name!r} is not snake_case; rename it (lowercase letters, digits, underscores)")
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


def _key(name: str, type_: pa.DataType, doc: str) -> pa.Field:
    return field(name, type_, doc, nullable=False)


RUN_ID = _key("run_id", pa.string(), "run identifier, the directory name under runs/")
MODEL = _key("model", pa.string(), "model name: 'dense', 'dsa', or a candidate's name")
CONTENT_TYPE = _key("content_type", pa.string(), "held-out corpus or synthetic task the samples come from")
SEQ_LEN = _key("seq_len", pa.int32(), "evaluated sequence length, tokens (bytes)")
LAYER = _key("layer", pa.int32(), "transformer block index, 0-based")

TRAIN_LOG = pa.schema(
    [
        RUN_ID,
        MODEL,
        _key("stage", pa.string(), "'pretrain' | 'dense_continue' | 'warmup' | 'sparse'"),
        _key("step", pa.int64(), "optimizer step within the stage, 0-based"),
        field("loss", pa.float64(), "total training loss of the step, nats"),
        field("lm_loss", pa.float64(), "next-token cross-entropy, nats per token"),
        field("kl_loss", pa.float64(), "indexer KL(p || softmax(I)), nats; null for stages without an indexer loss"),
        field("lr", pa.float64(), "learning rate used for the step"),
        _key("tokens_seen", pa.int64(), "tokens consumed in the stage up to and including this step"),
        field("wall_s", pa.float64(), "wall-clock seconds since the stage started"),
    ]
)

EVAL_LOSS = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SEQ_LEN,
        _key("train_seq_len", pa.int32(), "sequence length the model was trained at, tokens"),
        field("length_ratio", pa.float64(), "seq_len / train_seq_len"),
        _key("n_samples", pa.int32(), "number of evaluated sequences"),
        field("loss", pa.float64(), "mean next-token cross-entropy, nats per token"),
        field("bits_per_byte", pa.float64(), "loss / ln(2); tokens are bytes"),
    ]
)

INDEXER_RECALL = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SEQ_LEN,
        LAYER,
        _key("topk", pa.int32(), "number of keys the indexer selects per query"),
        field("recall", pa.float64(), "dense attention mass covered by the indexer's top-k, mean over queries"),
        field("oracle_recall", pa.float64(), "mass covered by the best possible k keys (dense top-k), same queries"),
        _key("n_queries", pa.int64(), "number of queries averaged"),
    ]
)

SAMPLE_ID = _key("sample_id", pa.string(), "validation sample id, f'{content_type}-{seq_len}-{i}'")
HEAD = _key("head", pa.int32(), "main attention head index, 0-based")
QUERY_POS = _key("query_pos", pa.int32(), "query position t, 0-based; it sees keys 0..t")
INDEXER_HEAD = _key("indexer_head", pa.int32(), "indexer head index, 0-based; -1 = the combined score I(t,s)")
CAPTURE_KEYS = [RUN_ID, MODEL, CONTENT_TYPE, SEQ_LEN, SAMPLE_ID, LAYER]
CAPTURE_PARTITIONS = ["model", "seq_len", "layer"]  # hive directories of every capture table

QUERY_STATS = pa.schema(
    [
        *CAPTURE_KEYS,
        HEAD,
        QUERY_POS,
        field("entropy", pa.float32(), "entropy of the attention row actually used, nats"),
        field("max_weight", pa.float32(), "largest attention weight of the row"),
        field("sink_mass", pa.float32(), "attention mass on the first 4 keys"),
        field("local_mass", pa.float32(), "attention mass on the last 16 keys up to and including the query"),
        field("mean_distance", pa.float32(), "sum_s a(t,s) * (t - s), tokens"),
        _key("k90", pa.int32(), "fewest keys holding 90% of the row's mass"),
        _key("k95", pa.int32(), "fewest keys holding 95% of the row's mass"),
        field("recall", pa.float32(), "DSA: dense mass (summed over heads, normalised) on the selected keys"),
        field("oracle_recall", pa.float32(), "DSA: dense mass on the best k keys (same normalisation)"),
        field("head_recall", pa.float32(), "DSA: this head's dense attention mass on the selected keys"),
        field("needed_recall", pa.float32(), "DSA, synthetic: fraction of ground-truth needed keys selected"),
        field("n_needed", pa.int32(), "synthetic: number of ground-truth needed keys; null for text"),
    ]
)

ATTENTION_TOPK = pa.schema(
    [
        *CAPTURE_KEYS,
        HEAD,
        QUERY_POS,
        _key("keys", pa.list_(pa.int32()), "the (up to) top-m key positions by weight, descending weight"),
        _key("weights", pa.list_(pa.float32()), "their attention weights (only weights > 0 are kept)"),
        field("mass", pa.float32(), "sum of the kept weights: the share of the row the list redraws"),
    ]
)

INDEXER_STATS = pa.schema(
    [
        *CAPTURE_KEYS,
        INDEXER_HEAD,
        QUERY_POS,
        field("weight", pa.float32(), "head weight w(t, j) (already scaled by (HI*DI)^-1/2); null for -1"),
        field("score_mean", pa.float32(), "mean over allowed keys of w*ReLU(q.k) (or of I for head -1)"),
        field("score_max", pa.float32(), "max over allowed keys"),
        field("score_q50", pa.float32(), "median over allowed keys (linear interpolation)"),
        field("score_q90", pa.float32(), "90th percentile over allowed keys"),
        field("score_q99", pa.float32(), "99th percentile over allowed keys"),
        field("active_frac", pa.float32(), "fraction of allowed keys with a non-zero score (ReLU active)"),
        _key("keys_50", pa.int32(), "fewest keys holding 50% of softmax(score) over allowed keys"),
        _key("keys_90", pa.int32(), "fewest keys holding 90% of softmax(score)"),
        _key("keys_99", pa.int32(), "fewest keys holding 99% of softmax(score)"),
        field(
            "main_head_corr",
            pa.list_(pa.float32()),
            "per main head h: Pearson correlation over allowed keys of this score row with the DSA model's "
            "dense attention row of head h (NaN where a row is constant)",
        ),
    ]
)

SELECTIONS = pa.schema(
    [
        *CAPTURE_KEYS,
        QUERY_POS,
        _key("token", pa.int16(), "input byte at query_pos (the text, so views need no corpus)"),
        _key("selected", pa.list_(pa.int32()), "key positions the indexer selected, ascending"),
        field("needed", pa.list_(pa.int32()), "synthetic: ground-truth needed key positions; null for text"),
        _key("n_selected", pa.int32(), "number of selected keys (k, or t + 1 when fewer are allowed)"),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "train_log": TRAIN_LOG,
    "eval_loss": EVAL_LOSS,
    "indexer_recall": INDEXER_RECALL,
    "query_stats": QUERY_STATS,
    "attention_topk": ATTENTION_TOPK,
    "indexer_stats": INDEXER_STATS,
    "selections": SELECTIONS,
}


def register_schema(name: str, schema: pa.Schema) -> pa.Schema:
    """Declare the schema of table `name`; re-registering the identical schema is a no-op.

    Raises ValueError when `name` or a column is not snake_case, or when `name` is already declared differently
    (extend the existing declaration instead of shadowing it).
    """
    if not _SNAKE.match(name):
        raise ValueError(f"table name {name!r} is not snake_case; use lowercase letters, digits and underscores")
    bad = [f.name for f in schema if not _SNAKE.match(f.name)]
    if bad:
        raise ValueError(f"schema {name!r} has columns that are not snake_case: {bad}")
    old = SCHEMAS.get(name)
    if old is not None and not old.equals(schema):
        raise ValueError(f"table {name!r} is already declared with a different schema in sparselens.storage.schemas")
    SCHEMAS[name] = schema
    return schema


def is_snake_case(name: str) -> bool:
    """True for names that follow the column and table naming convention."""
    return bool(_SNAKE.match(name))
