"""Sections of the phases after training: capture, interpret (Phase 1), patterns (Phase 2), optimize (Phase 3),
benchmark (Phase 4) and monitor. Each is a frozen dataclass whose fields say their unit or reason; presets.py holds
the one table of their values per preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparselens.analysis.headmaps import MAX_QUERIES
from sparselens.analysis.patterns import BUDGET
from sparselens.config.base import ConfigError
from sparselens.data.dataset import CONTENT_TYPES


def _positive(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{name}={getattr(obj, name)} must be positive")


def _lengths(name: str, values: tuple[int, ...], allow_empty: bool = False) -> None:
    if (not values and not allow_empty) or any(int(t) <= 0 for t in values):
        raise ConfigError(f"{name}={values} must be a non-empty tuple of positive lengths in tokens")


def _backend(value: str | None) -> None:
    if value not in (None, "reference", "cpu", "triton"):
        raise ConfigError(f"kernel_backend={value!r} is unknown; use reference, cpu, triton, or None for the fastest")


def _content_types(name: str, values: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(CONTENT_TYPES))
    if unknown or not values:
        raise ConfigError(f"{name} has unknown names {unknown} or is empty; choose from {CONTENT_TYPES}")


@dataclass(frozen=True)
class CaptureConfig:
    """Hooked forward passes of the run's models over held-out samples, reduced to per-query rows."""

    seq_lens: tuple[int, ...] = (128, 256, 512, 1024)  # tokens; k is absolute, so long lengths show its limits
    n_samples: int = 4  # validation samples per content type and length
    topk_samples: int = 1  # of those, how many (the first) also keep their top-m keys in attention_topk
    top_m: int = 32  # keys kept per query and head in attention_topk (maps are redrawn from them); DSA: >= k
    chunk_elements: int = 2**22  # B*H*T*T budget of one forward chunk (~8 such fp32 maps live; 16 MiB each here)
    models: tuple[str, ...] = ("dense", "dsa")  # run-store model names; "dsa" ones (with indexers) get DSA rows
    content_types: tuple[str, ...] = CONTENT_TYPES
    sink_keys: int = 4  # sink mass = mass on keys 0..sink_keys-1 (StreamingLLM keeps 4)
    local_keys: int = 16  # local mass = mass on the last local_keys keys up to and including the query
    device: str = "cpu"  # where the hooked passes and statistics run ("cuda" for the full preset on a GPU)

    def __post_init__(self) -> None:
        _lengths("seq_lens", self.seq_lens)
        _positive(self, "n_samples", "top_m", "chunk_elements", "sink_keys", "local_keys")
        if not 0 <= self.topk_samples <= self.n_samples:
            raise ConfigError(f"topk_samples={self.topk_samples} must be between 0 and n_samples={self.n_samples}")
        _content_types("content_types", self.content_types)
        if not self.models:
            raise ConfigError("models must name at least one saved model, e.g. ('dense', 'dsa')")


@dataclass(frozen=True)
class InterpretConfig:
    """Phase 1 views and summaries; everything is read from the capture tables."""

    view_content_types: tuple[str, ...] = ("code", "assoc_recall")  # samples drawn as maps and token views
    view_sample: int = 0  # which captured sample of each content type (must be < capture topk_samples)
    full_map_max_len: int = 512  # longest length drawn as a full T x T map; longer ones are block-pooled
    pooled_blocks: int = 64  # a pooled map has at most this many blocks per side
    recall_threshold: float = 0.9  # "recall falls below this" defines the usable length per layer
    text_width: int = 64  # characters per line in the token-selection view
    hist_bins: int = 40  # bins of the entropy / weight / score histograms
    position_bins: int = 32  # query-position bins of the indexer-mass threshold curves
    panel_px: int = 150  # side of one heatmap panel, pixels
    png_scale: float = 1.25  # PNG pixel density relative to the chart's layout size (maps get sharper, files larger)

    def __post_init__(self) -> None:
        if not 0 < self.recall_threshold < 1:
            raise ConfigError(f"recall_threshold={self.recall_threshold} must lie strictly between 0 and 1")
        _positive(self, "full_map_max_len", "pooled_blocks", "text_width", "hist_bins", "position_bins", "panel_px")
        _positive(self, "png_scale")
        _content_types("view_content_types", self.view_content_types)
        if self.view_sample < 0:
            raise ConfigError(f"view_sample={self.view_sample} must be a captured sample index >= 0")


@dataclass(frozen=True)
class PatternsConfig:
    """Phase 2 settings; lengths default to the run's training length."""

    budget: float = BUDGET  # classify_head budget, a fraction of the keys (MInference's block-sparse density)
    max_queries: int = MAX_QUERIES  # maps longer than this are classified on their last max_queries queries
    efficiency_seq_lens: tuple[int, ...] = ()  # lengths of the recall-density curves; () = the training length
    efficiency_samples: int = 3  # validation samples per (model, content type, length) of the curves: mean + spread
    sparsify_seq_len: int | None = None  # length of the sparsify-one-head losses; None = the training length
    sparsify_samples: int = 4  # validation samples per content type for each sparsify loss (seed 1)
    density_points: int = 40  # log-spaced densities each curve is stored at
    max_k: int = 8  # largest KMeans k tried
    min_cluster_size: int = 3  # HDBSCAN's smallest cluster
    n_workers: int = 2  # LocalCluster workers when no existing cluster is given
    png_scale: float = 1.5  # PNG pixel density of the charts

    def __post_init__(self) -> None:
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget={self.budget} must be a fraction of the keys in (0, 1]")
        for name in (
            "max_queries",
            "efficiency_samples",
            "sparsify_samples",
            "density_points",
            "n_workers",
            "min_cluster_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_k < 2:
            raise ConfigError(f"max_k={self.max_k} must be >= 2 (KMeans needs two clusters to compare)")
        _lengths("efficiency_seq_lens", self.efficiency_seq_lens, allow_empty=True)
        if self.sparsify_seq_len is not None and self.sparsify_seq_len <= 0:
            raise ConfigError(f"sparsify_seq_len={self.sparsify_seq_len} must be a positive length, or None for T")
        _positive(self, "png_scale")


OPTIMIZE_FAMILIES = ("static", "shared", "pruned", "adaptive_k", "combined")


@dataclass(frozen=True)
class OptimizeConfig:
    """Phase 3: designs cheaper attention from Phase 2's measurements and fine-tunes each candidate fairly."""

    families: tuple[str, ...] = OPTIMIZE_FAMILIES  # designers to run; a `reference` (DSA continued) always runs
    baseline: bool = True  # also train the sink + window baseline (every layer, same k): it belongs in every table
    finetune_steps: int = 80  # sparse-stage steps of every candidate and of the equal-step DSA reference
    finetune_lr: float = 1e-3  # peak lr of those steps (own warm-up + cosine); the recipe ended at its 0.1 floor
    warmup_steps: int = 60  # indexer-only KL steps for a candidate's new (pruned) indexers before fine-tuning
    calibration_samples: int = 8  # training-split samples per content type the designers calibrate on
    eval_samples: int = 12  # validation samples per content type of the candidates' held-out losses
    window_keys: int = 28  # static baseline: the most recent keys, with sink_keys sinks (same k as DSA by default)
    sink_keys: int = 4  # static baseline: the first keys every query keeps (StreamingLLM keeps 4)
    static_tolerance: float = 0.005  # greedy static layers: zero-shot loss / DSA's may rise this much (mean of types)
    shared_tolerance: float = 0.01  # greedy sharing: the same bound (no content type may rise by 3x the bound)
    combined_tolerance: float = 0.01  # the combined design's greedy search over static and shared layers
    head_drop_min: float = 0.01  # pruning keeps an indexer head whose removal costs at least this much recall
    pruned_dim_fraction: float = 0.5  # pruned indexers keep this share of the indexer dims (fresh, warmed up)
    top_p_grid: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # adaptive k: p values tried (mean k <= k)
    time_lengths: tuple[int, ...] = (256, 1024)  # whole-model forward timed at these lengths (quick: T and 4T)
    core_length: int = 8192  # attention + indexer time measured at this length
    timing_repeats: int = 9  # interleaved forwards timed per model (median reported)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(OPTIMIZE_FAMILIES))
        if unknown:
            raise ConfigError(f"families has unknown names {unknown}; choose from {OPTIMIZE_FAMILIES}")
        _positive(self, "finetune_steps", "calibration_samples", "eval_samples", "timing_repeats", "finetune_lr")
        _positive(self, "core_length")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.window_keys < 1 or self.sink_keys < 0:
            raise ConfigError(f"window_keys={self.window_keys} must be >= 1 and sink_keys={self.sink_keys} >= 0")
        for name in ("static_tolerance", "shared_tolerance", "combined_tolerance", "head_drop_min"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a share in [0, 1)")
        if not 0 < self.pruned_dim_fraction <= 1:
            raise ConfigError(f"pruned_dim_fraction={self.pruned_dim_fraction} must be in (0, 1]")
        if not self.top_p_grid or any(not 0 < p <= 1 for p in self.top_p_grid):
            raise ConfigError(f"top_p_grid={self.top_p_grid} must hold shares of the indexer mass in (0, 1]")
        _lengths("time_lengths", self.time_lengths)


@dataclass(frozen=True)
class BenchmarkConfig:
    """Phase 4: quality, prefill, decode through the cache and memory of every model, side by side."""

    models: tuple[str, ...] = ()  # run-store model names; () = dense, dsa and every phase3_candidates candidate
    quality_multipliers: tuple[int, ...] = (1, 2, 4)  # held-out loss at these multiples of T
    quality_samples: int = 48  # validation samples per content type and length (paired across models); 16 left
    # code's ratio interval at T about +-0.9% wide, too wide for the champion rule's +1% bound to decide
    bootstrap: int = 1000  # paired-bootstrap resamples of each loss difference (95% intervals)
    retrieval_multipliers: tuple[int, ...] = (1, 2, 4)  # needle grid lengths, multiples of T (trained-for range)
    retrieval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle position, share of the haystack
    retrieval_samples: int = 8  # needle samples per (length, depth) cell; accuracy with a Wilson interval
    prefill_lens: tuple[int, ...] = (256, 1024, 8192)  # prefill lengths timed, tokens (T, 4T, 8192 for quick)
    decode_contexts: tuple[int, ...] = (1024, 4096, 16384, 32768)  # contexts of the decode ms/token timings
    decode_tokens: int = 16  # decoded tokens timed per context (after decode_warmup untimed steps)
    decode_warmup: int = 2  # untimed decode steps per context (the first one may grow the cache's buffers)
    decode_fill_chunk: int = 1024  # the decode cache is stitched from prefills of this many held-out tokens each
    repeats: int = 5  # timed prefills per (model, length), interleaved across models; one warm-up excluded
    threads: int | None = None  # torch threads while timing; None leaves torch's default (recorded either way)
    rss: bool = True  # measure peak RSS of prefill + decode in a fresh subprocess per model
    batch_size: int = 8  # sequences per quality / retrieval forward
    png_scale: float = 1.5  # PNG pixel density of the charts
    kernel_backend: str | None = None  # run every model on these kernels (reference/cpu/triton); None = fastest

    def __post_init__(self) -> None:
        _backend(self.kernel_backend)
        _lengths("quality_multipliers", self.quality_multipliers)
        _lengths("retrieval_multipliers", self.retrieval_multipliers)
        _lengths("prefill_lens", self.prefill_lens)
        _lengths("decode_contexts", self.decode_contexts)
        _positive(self, "quality_samples", "bootstrap", "retrieval_samples", "decode_tokens", "repeats")
        _positive(self, "decode_fill_chunk", "batch_size", "png_scale")
        if self.decode_warmup < 0:
            raise ConfigError(f"decode_warmup={self.decode_warmup} must be >= 0 untimed steps")
        if not self.retrieval_depths or any(not 0 <= d <= 1 for d in self.retrieval_depths):
            raise ConfigError(f"retrieval_depths={self.retrieval_depths} must be shares of the haystack in [0, 1]")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"threads={self.threads} must be a positive number of torch threads, or None")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models={self.models} names a model twice; list each once, or () for all")


@dataclass(frozen=True)
class MonitorConfig:
    """The scheduled check of the champion against the dense model, in one process.

    Each timed sample is one request per model (prefill `context` held-out tokens, then `decode_tokens` one-token
    steps), the two models alternating which goes first. The verdict is on the log time ratios champion / dense
    of this run against every earlier finished, not regressed run with the same host fingerprint (monitor.py).
    """

    context: int = 4096  # prefill length of one timed request, tokens (the decode steps continue from it)
    decode_tokens: int = 16  # decoded tokens per timed request
    samples: int = 10  # alternating (champion, dense) timed samples per batch; a second batch when undecided
    regress_p: float = 0.001  # Mann-Whitney p below which a slowdown can be a regression ...
    regress_ratio: float = 1.10  # ... when the champion/dense time ratio is at least this much worse than history
    same_p: float = 0.05  # p above which (or a change under same_ratio) the run counts as unchanged
    same_ratio: float = 1.03
    threads: int = 1  # torch threads while timing (fixed, so runs compare)
    loss_samples: int = 2  # fixed validation samples per content type at T for the deterministic held-out loss
    loss_rtol: float = 1e-6  # relative difference of that loss from the history's above which it has changed
    kernel_backend: str | None = None  # run both models on these kernels (reference/cpu/triton); None = fastest

    def __post_init__(self) -> None:
        _backend(self.kernel_backend)
        _positive(self, "context", "decode_tokens", "samples", "threads", "loss_samples")
        for name in ("regress_p", "same_p"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a p-value in (0, 1)")
        if not 1 <= self.same_ratio <= self.regress_ratio:
            raise ConfigError(
                f"same_ratio={self.same_ratio} and regress_ratio={self.regress_ratio} must satisfy 1 <= same <= regress"
            )
        if not 0 <= self.loss_rtol < 1:
            raise ConfigError(f"loss_rtol={self.loss_rtol} must be a relative tolerance in [0, 1)")
