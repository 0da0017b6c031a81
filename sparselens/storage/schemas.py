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
        field("loss_low", pa.float64(), "95% t-interval of loss over the n_samples per-sample mean losses: low end"),
        field("loss_high", pa.float64(), "high end of that interval"),
    ]
)

EVAL_LOSS_SAMPLES = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SEQ_LEN,
        _key("sample_id", pa.string(), "validation sample id; the same ids for every model (paired comparisons)"),
        field("loss", pa.float64(), "mean next-token cross-entropy of this sample, nats per token"),
    ]
)

EVAL_TASKS = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SEQ_LEN,
        _key("n_samples", pa.int32(), "held-out samples evaluated"),
        _key("n_answers", pa.int64(), "answer positions scored (targets with ground-truth needed keys)"),
        _key("n_correct", pa.int64(), "answer positions where the model's most probable byte is the target"),
        field("accuracy", pa.float64(), "n_correct / n_answers"),
        field("ci_low", pa.float64(), "lower end of the 95% Wilson interval of accuracy (over answer positions)"),
        field("ci_high", pa.float64(), "upper end of the 95% Wilson interval"),
        field("sample_acc_sd", pa.float64(), "standard deviation over samples of the per-sample accuracy"),
        field("answer_loss", pa.float64(), "mean next-token cross-entropy at the answer positions, nats"),
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
        field("recall_low", pa.float64(), "95% t-interval of recall over samples (per-sample means): low end"),
        field("recall_high", pa.float64(), "high end of that interval"),
        field("oracle_low", pa.float64(), "95% t-interval of oracle_recall over samples: low end"),
        field("oracle_high", pa.float64(), "high end of that interval"),
        _key("n_samples", pa.int32(), "samples the interval is over (queries of one sample are not independent)"),
    ]
)

INDEXER_RECALL_SAMPLES = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SEQ_LEN,
        _key("sample_id", pa.string(), "validation sample id"),
        LAYER,
        field("recall", pa.float64(), "dense mass on the indexer's top-k, mean over the sample's queries t >= k"),
        field("oracle_recall", pa.float64(), "mass on the best k keys, same queries"),
        _key("n_queries", pa.int64(), "queries averaged (t >= k)"),
    ]
)

EVAL_SUMMARY = pa.schema(
    [
        RUN_ID,
        CONTENT_TYPE,
        SEQ_LEN,
        _key("n_samples", pa.int32(), "validation samples, the same for both models (paired)"),
        field("dense_loss", pa.float64(), "equal-step dense baseline: mean loss over samples, nats per token"),
        field("dense_low", pa.float64(), "95% t-interval of dense_loss over samples: low end"),
        field("dense_high", pa.float64(), "high end"),
        field("dsa_loss", pa.float64(), "DSA model: mean loss over the same samples, nats per token"),
        field("dsa_low", pa.float64(), "95% t-interval of dsa_loss: low end"),
        field("dsa_high", pa.float64(), "high end"),
        field("ratio", pa.float64(), "dsa_loss / dense_loss"),
        field("ratio_low", pa.float64(), "95% paired-bootstrap interval of the ratio over the same samples: low end"),
        field("ratio_high", pa.float64(), "high end"),
        _key("n_recall_samples", pa.int32(), "samples of the recall columns (eval.recall_samples or fewer)"),
        field("recall", pa.float64(), "indexer recall, mean over layers and queries t >= k"),
        field("recall_low", pa.float64(), "95% t-interval over samples of the per-sample layer-mean recall: low end"),
        field("recall_high", pa.float64(), "high end"),
        field("oracle_recall", pa.float64(), "mass on each query's best k keys, mean over layers and queries"),
        field("oracle_low", pa.float64(), "95% t-interval over samples: low end"),
        field("oracle_high", pa.float64(), "high end"),
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

N_QUERIES = _key("n_queries", pa.int64(), "number of query rows summarised")


def _means(*names_docs: tuple[str, str]) -> list[pa.Field]:
    return [field(n, pa.float64(), d) for n, d in names_docs]


PHASE1_ENTROPY = pa.schema(
    [
        RUN_ID,
        MODEL,
        SEQ_LEN,
        LAYER,
        HEAD,
        N_QUERIES,
        *_means(
            ("entropy_mean", "mean attention entropy over queries, nats"),
            ("entropy_p10", "10th percentile of entropy over queries, nats"),
            ("entropy_p50", "median entropy, nats"),
            ("entropy_p90", "90th percentile of entropy, nats"),
            ("max_weight_mean", "mean of the largest weight per row"),
            ("sink_mass_mean", "mean mass on the first 4 keys"),
            ("local_mass_mean", "mean mass on the last 16 keys"),
            ("mean_distance_mean", "mean attention distance, tokens"),
            ("k90_mean", "mean keys holding 90% of the row's mass"),
        ),
    ]
)

PHASE1_SCALING = pa.schema(
    [
        RUN_ID,
        MODEL,
        _key("content_type", pa.string(), "content type, or 'all' for every type pooled"),
        SEQ_LEN,
        LAYER,
        N_QUERIES,
        *_means(
            ("entropy_mean", "mean entropy over heads and queries, nats"),
            ("k90_mean", "mean keys holding 90% of the row's mass (per head), queries t >= k"),
            ("k95_mean", "mean keys holding 95% of the row's mass (per head), queries t >= k"),
            ("recall_mean", "DSA: mean recall of dense mass on the selected keys, queries t >= k"),
            ("recall_p10", "DSA: 10th percentile of that recall over queries t >= k"),
            ("oracle_recall_mean", "DSA: mean dense mass on the best k keys, queries t >= k"),
            ("needed_recall_mean", "DSA, synthetic: mean fraction of needed keys selected, queries t >= k"),
        ),
    ]
)

PHASE1_RECALL_LENGTH = pa.schema(
    [
        RUN_ID,
        _key("content_type", pa.string(), "content type, or 'all'"),
        LAYER,
        field("threshold", pa.float64(), "recall threshold"),
        field("first_below", pa.int32(), "shortest captured length whose mean recall is below the threshold"),
        field("crossing_len", pa.float64(), "threshold crossing, interpolated linearly in log2(length), tokens"),
        field("recall_min_len", pa.float64(), "mean recall at the shortest captured length"),
        field("recall_max_len", pa.float64(), "mean recall at the longest captured length"),
        field("status", pa.string(), "the finding in words"),
    ]
)

PHASE1_HISTOGRAMS = pa.schema(
    [
        RUN_ID,
        MODEL,
        SEQ_LEN,
        LAYER,
        _key("head", pa.int32(), "main head (entropy) or indexer head (indexer_* quantities)"),
        _key("quantity", pa.string(), "'entropy' | 'indexer_weight' | 'indexer_score_q90' | 'indexer_active_frac'"),
        field("bin_lo", pa.float64(), "bin start (bins are shared by every group of one quantity)"),
        field("bin_hi", pa.float64(), "bin end"),
        field("fraction", pa.float64(), "fraction of the group's queries in the bin"),
    ]
)

PHASE1_INDEXER_HEADS = pa.schema(
    [
        RUN_ID,
        SEQ_LEN,
        LAYER,
        INDEXER_HEAD,
        N_QUERIES,
        *_means(
            ("score_mean", "mean score over queries and allowed keys"),
            ("score_q50_med", "median over queries of each row's median score"),
            ("score_q90_med", "median over queries of each row's 90th percentile"),
            ("score_q99_med", "median over queries of each row's 99th percentile"),
            ("score_max_med", "median over queries of each row's max"),
            ("active_frac_mean", "mean fraction of allowed keys with ReLU active"),
            ("weight_mean", "mean head weight w"),
            ("weight_std", "standard deviation of w over queries"),
            ("weight_p10", "10th percentile of w"),
            ("weight_p90", "90th percentile of w"),
            ("weight_pos_frac", "fraction of queries with w > 0"),
            ("keys_50_mean", "mean keys holding 50% of softmax(score)"),
            ("keys_90_mean", "mean keys holding 90% of softmax(score)"),
            ("keys_99_mean", "mean keys holding 99% of softmax(score)"),
        ),
    ]
)

PHASE1_INDEXER_CORR = pa.schema(
    [
        RUN_ID,
        SEQ_LEN,
        LAYER,
        INDEXER_HEAD,
        HEAD,
        field("corr_mean", pa.float64(), "mean over queries of Pearson r(indexer score row, dense attention row)"),
        _key("n_queries", pa.int64(), "queries where r is defined"),
    ]
)

PHASE1_INDEXER_MASS = pa.schema(
    [
        RUN_ID,
        SEQ_LEN,
        LAYER,
        INDEXER_HEAD,
        _key("pos_lo", pa.int32(), "first query position of the bin"),
        *_means(
            ("keys_50", "mean keys holding 50% of softmax(score) for queries in the bin"),
            ("keys_90", "same, 90%"),
            ("keys_99", "same, 99%"),
        ),
    ]
)

PHASE1_PROFILES = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SAMPLE_ID,
        SEQ_LEN,
        LAYER,
        HEAD,
        _key("kind", pa.string(), "'slash': by distance t - s; 'vertical': by key position s"),
        _key("position", pa.int32(), "distance (slash) or key position (vertical), tokens"),
        field("mass", pa.float32(), "mean weight over the queries that reach it (from attention_topk)"),
    ]
)

PHASE1_CHARTS = pa.schema(
    [
        RUN_ID,
        _key("name", pa.string(), "chart name"),
        _key("title", pa.string(), "chart title"),
        _key("png", pa.string(), "PNG path relative to the run directory"),
        _key("html", pa.string(), "offline HTML path relative to the run directory"),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "train_log": TRAIN_LOG,
    "eval_loss": EVAL_LOSS,
    "eval_loss_samples": EVAL_LOSS_SAMPLES,
    "eval_summary": EVAL_SUMMARY,
    "eval_tasks": EVAL_TASKS,
    "indexer_recall": INDEXER_RECALL,
    "indexer_recall_samples": INDEXER_RECALL_SAMPLES,
    "query_stats": QUERY_STATS,
    "attention_topk": ATTENTION_TOPK,
    "indexer_stats": INDEXER_STATS,
    "selections": SELECTIONS,
    "phase1_entropy": PHASE1_ENTROPY,
    "phase1_scaling": PHASE1_SCALING,
    "phase1_recall_length": PHASE1_RECALL_LENGTH,
    "phase1_histograms": PHASE1_HISTOGRAMS,
    "phase1_indexer_heads": PHASE1_INDEXER_HEADS,
    "phase1_indexer_corr": PHASE1_INDEXER_CORR,
    "phase1_indexer_mass": PHASE1_INDEXER_MASS,
    "phase1_profiles": PHASE1_PROFILES,
    "phase1_charts": PHASE1_CHARTS,
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


# Phase 2 (patterns): sparselens.phase2.run writes these; every share is a mean over queries of row mass.
HEAD_KEYS = [RUN_ID, MODEL, CONTENT_TYPE, SEQ_LEN, LAYER, HEAD]
KIND = _key("kind", pa.string(), "pattern kind: local, sink, sink_local, vertical_slash, block, scattered, broad")


def _floats(*pairs: tuple[str, str]) -> list[pa.Field]:
    return [field(name, pa.float64(), doc) for name, doc in pairs]


PHASE2_HEAD_FEATURES = pa.schema(
    [
        *HEAD_KEYS,
        *_floats(
            ("sink_mass", "query_stats mean over t >= 1: mass on the first 4 keys"),
            ("local_mass", "query_stats mean: mass on the last 16 keys up to the query"),
            ("entropy_norm", "mean entropy / ln(t + 1); 1 = uniform over the visible keys"),
            ("max_weight", "mean largest weight of a row"),
            ("mean_distance", "mean attention distance sum_s a(t,s)(t - s), tokens"),
            ("distance_frac", "mean attention distance / (t + 1)"),
            ("k90_frac", "mean over queries of k90 / (t + 1): share of visible keys holding 90% of the row"),
            ("k95_frac", "mean over queries of k95 / (t + 1)"),
            ("dsa_recall", "DSA, queries t >= k: the layer's dense mass (summed over heads) on the selected keys"),
            ("dsa_head_recall", "DSA, t >= k: this head's dense mass on the selected keys"),
            ("dsa_oracle_recall", "DSA, t >= k: the layer's dense mass on its best k keys"),
            ("dsa_needed_recall", "DSA, t >= k, synthetic: share of ground-truth needed keys selected"),
        ),
        _key("n_queries", pa.int64(), "query_stats rows averaged (queries t >= 1 over all captured samples)"),
        *_floats(
            ("map_mass", "mean share of a row the attention_topk list holds (1 = the rebuilt map is exact)"),
            ("local_w1", "map: mass on offset 0 (the query's own key)"),
            ("local_w4", "map: mass on offsets 0..3"),
            ("local_w16", "map: mass on offsets 0..15"),
            ("local_w64", "map: mass on offsets 0..63"),
            ("vertical_conc", "map: mass on the best ceil(T/16) columns"),
            ("slash_conc", "map: mass on the best ceil(T/16) offsets (diagonals)"),
            ("block_conc", "map: per 16-position query block, mass on its best ceil(T/256) 16-key blocks"),
            ("dec_sink", "decompose_head: sink fraction"),
            ("dec_local", "decompose_head: local fraction"),
            ("dec_vertical", "decompose_head: vertical fraction"),
            ("dec_slash", "decompose_head: slash fraction"),
            ("dec_block", "decompose_head: block fraction"),
            ("dec_residual", "decompose_head: residual fraction"),
            ("coverage", "classify_head: recall of the fitted pattern"),
            ("fit_density", "classify_head: density of the fitted pattern over the causal area"),
            ("oracle_coverage", "recall of each query's own top-budget keys"),
            ("needed_mass", "synthetic: mass on the ground-truth needed keys, queries that have some"),
            ("needed_argmax", "synthetic: share of those queries whose heaviest key is needed"),
            ("needed_chance", "synthetic: needed_mass of a uniform row, n_needed / (t + 1)"),
        ),
        _key("n_needed_queries", pa.int64(), "queries with ground-truth needed keys in the map sample(s)"),
        KIND,
        field("fit_params", pa.string(), "JSON of the fitted pattern's parameters (block tables omitted)"),
        _key("n_map_samples", pa.int64(), "attention_topk samples the map features average over"),
    ]
)

PHASE2_GROUND_TRUTH = pa.schema(
    [
        *HEAD_KEYS,
        KIND,
        *_floats(
            ("coverage", "classify_head recall of the fitted pattern"),
            ("needed_mass", "mass on the ground-truth needed keys (queries that have some)"),
            ("needed_argmax", "share of those queries whose heaviest key is needed"),
            ("needed_chance", "needed_mass of a uniform row"),
        ),
        _key("n_needed_queries", pa.int64(), "queries with needed keys"),
        *_floats(
            ("dsa_needed_recall", "DSA: share of needed keys the indexer selected (layer-wide)"),
            ("lift", "needed_mass / needed_chance"),
        ),
        _key("rank", pa.int64(), "rank by needed_mass within (model, content_type, seq_len); 1 = strongest"),
    ]
)

PHASE2_KIND_DISTRIBUTION = pa.schema(
    [
        RUN_ID,
        MODEL,
        SEQ_LEN,
        _key("content_type", pa.string(), "content type, or 'all' pooled"),
        KIND,
        _key("n_heads", pa.int64(), "heads of this kind"),
        *_floats(
            ("coverage", "their mean fitted recall"),
            ("fit_density", "their mean fitted density"),
            ("oracle_coverage", "their mean per-query top-budget recall"),
            ("share", "n_heads / heads of the (model, seq_len, content_type)"),
        ),
    ]
)

PHASE2_KIND_STABILITY = pa.schema(
    [
        RUN_ID,
        MODEL,
        SEQ_LEN,
        LAYER,
        HEAD,
        _key("modal_kind", pa.string(), "most frequent kind over content types (ties: alphabetical)"),
        field("stability", pa.float64(), "share of content types giving the modal kind"),
        _key("n_kinds", pa.int64(), "distinct kinds over content types"),
        _key("n_content_types", pa.int64(), "content types measured"),
        _key("kinds", pa.string(), "'content_type:kind' per content type, '|'-separated"),
    ]
)

PHASE2_RELEVANCE = pa.schema(
    [
        RUN_ID,
        MODEL,
        CONTENT_TYPE,
        SEQ_LEN,
        LAYER,
        _key("n_queries", pa.int64(), "DSA queries t >= k averaged"),
        *_floats(
            ("needed_share", "share of selected keys that are ground-truth needed (synthetic)"),
            ("needed_chance", "share of visible keys that are needed (a random selection)"),
            ("same_byte_share", "share of selected keys holding the query's byte"),
            ("same_byte_chance", "share of visible keys holding the query's byte"),
            ("induction_share", "share of selected keys s with token[s-1] == token[t] (induction targets)"),
            ("induction_chance", "share of visible keys that are induction targets"),
        ),
    ]
)

PHASE2_CLUSTERS = pa.schema(
    [
        *HEAD_KEYS,
        KIND,
        _key("scope", pa.string(), "'group': clustered within (model, content_type, seq_len); 'model': all of a model"),
        _key("kmeans", pa.int64(), "KMeans cluster (k by silhouette)"),
        _key("hdbscan", pa.int64(), "HDBSCAN cluster, -1 = noise"),
        *_floats(
            ("x", "first PCA component of the standardised features (within the scope)"), ("y", "second PCA component")
        ),
    ]
)

PHASE2_CLUSTER_SUMMARY = pa.schema(
    [
        RUN_ID,
        MODEL,
        _key("content_type", pa.string(), "content type, or 'all' for model scope"),
        _key("seq_len", pa.int32(), "length, or -1 for model scope"),
        _key("scope", pa.string(), "'group' or 'model'"),
        _key("n_points", pa.int64(), "heads clustered"),
        _key("n_kinds", pa.int64(), "distinct kinds among them"),
        _key("kmeans_k", pa.int64(), "k chosen by silhouette (1 when too few points)"),
        *_floats(("silhouette", "silhouette of the chosen k"), ("ari_kmeans", "adjusted Rand index, KMeans vs kinds")),
        _key("hdbscan_clusters", pa.int64(), "HDBSCAN clusters (noise excluded)"),
        *_floats(
            ("hdbscan_noise", "share of points HDBSCAN calls noise"),
            ("ari_hdbscan", "adjusted Rand index, HDBSCAN (noise as one label) vs kinds"),
        ),
    ]
)

METHOD = _key("method", pa.string(), "sink, local, sink_local, vertical_slash, block, topk_per_query, indexer, oracle")

PHASE2_CURVES = pa.schema(
    [
        *HEAD_KEYS,
        KIND,
        METHOD,
        *_floats(
            ("density", "mask density over the causal area (log-spaced grid)"),
            ("recall", "best recall of the method at density <= this (dense attention of the head)"),
        ),
    ]
)

PHASE2_EFFICIENCY = pa.schema(
    [
        *HEAD_KEYS,
        KIND,
        METHOD,
        *_floats(
            ("auc", "mean recall over densities in (0, 0.5]"),
            ("auc_vs_oracle", "auc / the oracle's auc"),
            ("regret_d16", "oracle recall - method recall at density 1/16"),
            ("regret_d8", "same at density 1/8"),
            ("regret_d4", "same at density 1/4"),
            ("op_density", "density where the method runs: its fit at the budget, top-budget keys, the indexer's k"),
            ("op_recall", "recall there"),
            ("op_regret", "oracle recall at op_density - op_recall"),
            ("keys_per_query", "mean keys per query at the operating point"),
            ("flops_per_query", "analytic FLOPs per query and head at the operating point (indexer share included)"),
            ("dense_flops_per_query", "FLOPs per query and head of dense attention at this length"),
            ("auc_low", "95% t-interval of auc over the n_samples validation samples (each map measured alone): low"),
            ("auc_high", "high end of that interval"),
            ("op_recall_low", "95% t-interval of op_recall over samples: low end"),
            ("op_recall_high", "high end of that interval"),
        ),
        _key("n_samples", pa.int64(), "validation samples averaged (every column above is their mean)"),
    ]
)

PHASE2_SPARSIFY = pa.schema(
    [
        RUN_ID,
        MODEL,
        SEQ_LEN,
        LAYER,
        HEAD,
        _key("content_type", pa.string(), "content type of the evaluated samples, or 'all'"),
        KIND,
        *_floats(
            ("coverage", "recall of the fitted pattern on the head's mean map"),
            ("fit_density", "density of the fitted pattern"),
        ),
        _key("sparsified", pa.bool_(), "False for broad heads (nothing sparse to apply; delta 0)"),
        *_floats(
            ("base_loss", "validation loss of the untouched model, nats per token"),
            ("loss", "loss with this head restricted to its fitted pattern"),
            ("delta_loss", "loss - base_loss"),
            ("delta_low", "95% paired-bootstrap interval over the samples of delta_loss: low end (NaN for n = 1)"),
            ("delta_high", "high end of that interval"),
            ("delta_sd", "standard deviation over samples of the per-sample loss change"),
        ),
        _key("n_samples", pa.int64(), "validation samples (seed 1) averaged"),
    ]
)

SCHEMAS.update(
    {
        "phase2_head_features": PHASE2_HEAD_FEATURES,
        "phase2_ground_truth": PHASE2_GROUND_TRUTH,
        "phase2_kind_distribution": PHASE2_KIND_DISTRIBUTION,
        "phase2_kind_stability": PHASE2_KIND_STABILITY,
        "phase2_relevance": PHASE2_RELEVANCE,
        "phase2_clusters": PHASE2_CLUSTERS,
        "phase2_cluster_summary": PHASE2_CLUSTER_SUMMARY,
        "phase2_curves": PHASE2_CURVES,
        "phase2_efficiency": PHASE2_EFFICIENCY,
        "phase2_sparsify": PHASE2_SPARSIFY,
    }
)

PHASE4_BENCHMARK = pa.schema(
    [
        RUN_ID,
        MODEL,
        _key("family", pa.string(), "dense, dsa, reference, or the Phase 3 family of a candidate"),
        _key("metric", pa.string(), "what was measured (sparselens.benchmark.table.METRICS)"),
        _key("seq_len", pa.int32(), "length, prefill length or decode context, tokens; 0 = not length-dependent"),
        _key("content_type", pa.string(), "content type; 'all' when not split by it; 'needle' for retrieval"),
        field("depth", pa.float64(), "retrieval: needle position as a share of the haystack; null otherwise"),
        _key(
            "unit",
            pa.string(),
            "unit of value, low, high: nats/token, bits/byte, ratio, fraction, ms, bytes, MiB, MACs",
        ),
        field("value", pa.float64(), "the estimate: mean, median (timings), accuracy, or the analytic count"),
        field("low", pa.float64(), "lower end of the interval named by `interval`; null when none"),
        field("high", pa.float64(), "upper end of that interval"),
        _key("n", pa.int64(), "samples, timed repeats or needle queries the value rests on"),
        _key("interval", pa.string(), "t95 | bootstrap95 (paired, over samples) | wilson95 | iqr (q25..q75) | none"),
        field("threads", pa.int32(), "torch intra-op threads of a timing row; null for other rows"),
    ]
)

MONITOR_RUN = _key("monitor_run", pa.string(), "id of one monitor run: UTC time and a random suffix")
FINGERPRINT = _key("fingerprint", pa.string(), "hash of cpu_model, cores, threads and torch_version")
_MONITOR_CONTEXT = [
    RUN_ID,
    MONITOR_RUN,
    FINGERPRINT,
    _key("champion", pa.string(), "the champion model timed against dense"),
    _key("kernel_backend", pa.string(), "kernel override of the run: default, reference, cpu or triton"),
    _key("context", pa.int32(), "prefill tokens of one timed request"),
    _key("decode_tokens", pa.int32(), "decode steps of one timed request"),
]

MONITOR_HISTORY = pa.schema(
    [
        *_MONITOR_CONTEXT,
        _key("cpu_model", pa.string(), "CPU model name of the host"),
        _key("cores", pa.int32(), "logical CPUs of the host"),
        _key("threads", pa.int32(), "torch intra-op threads while timing"),
        _key("torch_version", pa.string(), "torch.__version__"),
        MODEL,
        _key("role", pa.string(), "'champion' or 'dense'"),
        _key("metric", pa.string(), "prefill_ms, decode_ms_per_token, heldout_loss or cache_bytes_per_token"),
        _key("sample", pa.int32(), "index of the timed sample in this monitor run; -1 for deterministic numbers"),
        _key("batch", pa.int32(), "0 for the first batch of samples, 1 for the one measured when undecided"),
        field("value", pa.float64(), "ms (timings), nats per token (loss) or bytes per cached position"),
        _key("measured_at", pa.timestamp("us", tz="UTC"), "when the row was measured"),
    ]
)

MONITOR_VERDICTS = pa.schema(
    [
        *_MONITOR_CONTEXT,
        _key("metric", pa.string(), "prefill_ms, decode_ms_per_token, deterministic, or 'overall'"),
        _key("verdict", pa.string(), "baseline | same | improved | inconclusive | regressed | changed"),
        field("p_value", pa.float64(), "Mann-Whitney p of this run's log time ratios against the history's"),
        field("change", pa.float64(), "exp(median log ratio now - then) - 1; deterministic: relative loss change"),
        _key("n_current", pa.int32(), "samples of this run"),
        _key("n_history", pa.int32(), "samples of the history compared against"),
        _key("rule_version", pa.string(), "version of the decision rule"),
        _key("finished_at", pa.timestamp("us", tz="UTC"), "when the verdict was reached"),
    ]
)

SCHEMAS.update(
    {"phase4_benchmark": PHASE4_BENCHMARK, "monitor_history": MONITOR_HISTORY, "monitor_verdicts": MONITOR_VERDICTS}
)
