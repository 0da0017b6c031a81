"""Planted attention heads: causal maps of a known kind with random parameters, ground truth for ``classify_head``.

A planted row is a softmax over structured logits plus Gaussian noise, written as its two parts: a *structure* share
``1 - noise`` spread over the kind's keys with log-normal weights (``exp(s * N(0, 1))``, s ~ U(jitter), times the
kind's own profile, e.g. a distance decay), and a *background* share ``noise`` spread over every causal key with
weights ``exp(sigma * N(0, 1))``. Rows whose structure has no visible key yet (a column to the right of the query)
are background only.

Every random range lives in a `PlantConfig`; `CONFIGS` names several, each broadening one direction of the
original generator (`base`): sink counts (`sinks`), block sizes and placement (`blocks`), noise levels (`noisy`),
lengths and query windows (`lengths`), and all of them at once (`wide`). `HELD_OUT` (`holdout`) is a configuration
kept out of all tuning of ``classify_head``: its parameter values (longer maps, odd block sizes off the block grid,
more sinks, mid-high noise) are reached by no tuned configuration's ranges at the same time, and
benchmarks/planted_heads.py reports accuracy on it separately.

Parameters scale with K so that every structured kind is sparse at the classifier's default budget (K/8 keys per
query) and none is a special case of a simpler kind:

- ``sink``: the first n keys (n from ``sinks``, at most K/16), with a random decay over them (the first usually
  heaviest, or flat);
- ``local``: a window of 1..max(2, K/16) keys with a random decay; a quarter skip the query's own key (previous-token
  heads);
- ``sink_local``: sink keys holding a ``sink_share`` of the structure, plus a window as above;
- ``vertical_slash``: 0-4 columns and 0-4 offsets, at least two lines, at least one column or offset >= 8;
- ``block``: blocks of ``block_sizes`` positions (at most K/16), starting at a random ``block_phase``; each query
  block reads 1 or more random earlier key blocks (at most K/16 keys), plus its own block half the time; with
  probability ``own_only`` a query block reads only its own block (a block-diagonal head; blocks of 8 or more, as
  a smaller own block is a local window in all but name);
- ``scattered``: each query reads its own 1..max(2, K/32) random keys (content-addressed, like induction);
- ``broad``: background only (sigma ~ U(0, 0.8)), with a mild recency slope and, half the time, up to 10 % on key 0.

Shapes: K ~ U{keys}; Q = K, or (with probability ``short_queries``) the last Q ~ U{16..K-1} queries.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from sparselens.analysis.patterns import KINDS


@dataclass(frozen=True)
class PlantConfig:
    """The random ranges of one planted-head generator (module docstring); ranges are inclusive (lo, hi)."""

    name: str
    keys: tuple[int, int] = (64, 256)  # K, keys of a map
    short_queries: float = 0.25  # share of maps that keep only their last Q < K queries
    noise: tuple[float, float] = (0.05, 0.3)  # background share of each row's mass
    sigma: tuple[float, float] = (0.2, 1.2)  # log-normal scale of the background weights
    jitter: tuple[float, float] = (0.0, 0.8)  # log-normal scale of the structure weights
    sinks: tuple[int, int] = (1, 4)  # sink keys (capped at K/16)
    sink_decay: tuple[float, float] = (0.0, 1.5)  # exp(-decay * i) over sink key i
    sink_share: tuple[float, float] = (0.2, 0.7)  # sink_local: the sink's share of the structure
    block_sizes: tuple[int, ...] = (4, 8, 16, 32)  # sizes drawn from (those <= max(4, K/16))
    block_phase: bool = False  # blocks start at a random offset in [0, size) instead of at key 0
    own_only: float = 0.0  # share of block heads whose query blocks read only their own block


BASE = PlantConfig("base")
CONFIGS = {
    "base": BASE,
    "sinks": dataclasses.replace(BASE, name="sinks", sinks=(1, 8), sink_decay=(0.0, 0.8), sink_share=(0.15, 0.8)),
    "blocks": dataclasses.replace(
        BASE, name="blocks", block_sizes=(4, 6, 8, 12, 16, 24, 32, 48), block_phase=True, own_only=0.25
    ),
    "noisy": dataclasses.replace(BASE, name="noisy", noise=(0.25, 0.45), sigma=(0.5, 1.5), jitter=(0.3, 1.0)),
    "lengths": dataclasses.replace(BASE, name="lengths", keys=(32, 512), short_queries=0.5),
    "wide": PlantConfig(
        "wide",
        keys=(32, 512),
        short_queries=0.4,
        noise=(0.02, 0.4),
        sigma=(0.2, 1.5),
        jitter=(0.0, 1.0),
        sinks=(1, 8),
        sink_decay=(0.0, 1.5),
        sink_share=(0.15, 0.8),
        block_sizes=(4, 6, 8, 12, 16, 24, 32, 48),
        block_phase=True,
        own_only=0.25,
    ),
    "holdout": PlantConfig(
        "holdout",
        keys=(600, 800),
        short_queries=0.5,
        noise=(0.25, 0.38),
        sigma=(0.6, 1.3),
        jitter=(0.4, 0.9),
        sinks=(5, 12),
        sink_decay=(0.0, 0.5),
        sink_share=(0.3, 0.6),
        block_sizes=(5, 10, 20, 40),
        block_phase=True,
        own_only=0.3,
    ),
}
HELD_OUT = "holdout"  # never used to tune classify_head; reported alone
TUNING = tuple(name for name in CONFIGS if name != HELD_OUT)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _lognormal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return np.exp(scale * rng.standard_normal(shape))


def _sink(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray, cfg: PlantConfig) -> tuple[np.ndarray, dict]:
    k = offset.shape[1]
    n = int(rng.integers(cfg.sinks[0], max(cfg.sinks[0], min(cfg.sinks[1], max(1, k // 16))) + 1))
    w = np.zeros(offset.shape)
    w[:, :n] = np.exp(-_uniform(rng, cfg.sink_decay) * np.arange(n)) * _lognormal(rng, (1, n), 0.3)  # [Q, n]
    return w, {"n_sink": n}


def _window(rng: np.random.Generator, offset: np.ndarray, n_keys: int) -> tuple[np.ndarray, dict]:
    window = int(rng.integers(1, max(2, n_keys // 16) + 1))
    first = int(rng.random() < 0.25 and window >= 2)  # 1: a previous-token head that skips its own key
    inside = (offset >= first) & (offset < first + window)
    return np.where(inside, np.exp(-rng.uniform(0, 0.5) * offset), 0.0), {"window": window, "first_offset": first}


def _local(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray, cfg: PlantConfig) -> tuple[np.ndarray, dict]:
    return _window(rng, offset, offset.shape[1])


def _sink_local(
    rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray, cfg: PlantConfig
) -> tuple[np.ndarray, dict]:
    sink, sink_params = _sink(rng, pos, offset, cfg)
    window, window_params = _window(rng, offset, offset.shape[1])
    share = _uniform(rng, cfg.sink_share)  # of the structure mass on the sink
    w = share * sink / sink.sum(1, keepdims=True) + (1 - share) * window / window.sum(1, keepdims=True).clip(1e-30)
    return w, sink_params | window_params | {"sink_share": share}


def _vertical_slash(
    rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray, cfg: PlantConfig
) -> tuple[np.ndarray, dict]:
    q, k = offset.shape
    while True:
        n_v, n_s = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        cols = np.sort(rng.choice(k - q + max(1, q // 2), size=n_v, replace=False))  # seen by at least half the rows
        offs = np.sort(rng.choice(k // 2, size=n_s, replace=False))
        if n_v + n_s >= 2 and max([*cols, *offs]) >= 8:
            break
    w = np.zeros(offset.shape)
    w[:, cols] += _lognormal(rng, (1, n_v), 0.5)
    for o, weight in zip(offs, _lognormal(rng, (n_s,), 0.5), strict=True):
        w += (offset == o) * weight
    return w, {"columns": cols.tolist(), "offsets": offs.tolist()}


def _block(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray, cfg: PlantConfig) -> tuple[np.ndarray, dict]:
    k = offset.shape[1]
    sizes = [b for b in cfg.block_sizes if b <= max(4, k // 16)] or [min(cfg.block_sizes)]
    block = int(rng.choice(sizes))
    phase = int(rng.integers(0, block)) if cfg.block_phase else 0  # block i covers [i*b - phase, (i+1)*b - phase)
    per_row = int(rng.integers(1, max(1, k // 16 // block) + 1))
    own_only = cfg.own_only > 0 and block >= 8 and bool(rng.random() < cfg.own_only)  # smaller: a local window
    own = own_only or bool(rng.random() < 0.5)
    of = lambda p: (p + phase) // block  # noqa: E731  block index of positions p
    n_blocks = int(of(np.array(k - 1))) + 1
    table = np.zeros((n_blocks, n_blocks))  # [query block, key block] weight
    for qb in range(int(of(pos[0])), n_blocks):
        if own_only:
            earlier = np.array([], int)
        else:
            earlier = rng.choice(qb, size=min(per_row, qb), replace=False) if qb else np.array([0])
        table[qb, earlier] = _lognormal(rng, (len(earlier),), 0.5)
        table[qb, qb] += float(own or qb == 0)
    w = table[of(pos)[:, None], of(np.arange(k))[None, :]]  # [Q, K]
    params = {"block_size": block, "phase": phase, "blocks_per_row": 0 if own_only else per_row, "own_block": own}
    return w, params


def _scattered(
    rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray, cfg: PlantConfig
) -> tuple[np.ndarray, dict]:
    q, k = offset.shape
    n = int(rng.integers(1, max(2, k // 32) + 1))
    score = np.where(offset >= 0, rng.random((q, k)), -1.0)  # [Q, K] random order of each row's causal keys
    top = np.argpartition(-score, n - 1, axis=1)[:, :n]  # [Q, n]
    w = np.zeros((q, k))
    np.put_along_axis(w, top, _lognormal(rng, (q, n), 0.5), axis=1)
    return w, {"keys_per_query": n}


_STRUCTURE = {
    "sink": _sink,
    "local": _local,
    "sink_local": _sink_local,
    "vertical_slash": _vertical_slash,
    "block": _block,
    "scattered": _scattered,
}


def _broad(rng: np.random.Generator, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    sigma, slope = rng.uniform(0, 0.8), rng.uniform(0, 2)
    logits = sigma * rng.standard_normal(offset.shape) - slope * offset / offset.shape[1]  # [Q, K]
    w = np.where(offset >= 0, np.exp(logits - logits.max(1, keepdims=True)), 0.0)
    w /= w.sum(1, keepdims=True)
    sink = rng.uniform(0, 0.1) * (rng.random() < 0.5)
    w[:, 0] += sink
    return w / w.sum(1, keepdims=True), {"sigma": sigma, "slope": slope, "sink_mass": sink, "noise": 1.0}


def plant_head(
    kind: str,
    n_queries: int,
    n_keys: int,
    rng: np.random.Generator,
    noise: float | None = None,
    config: PlantConfig | str = BASE,
) -> tuple[np.ndarray, dict]:
    """One planted head: ``attn[Q, K]`` float64 (causal, rows sum to 1, query t at key K-Q+t) and its params.

    ``noise`` is the share of each row's mass on the background (default drawn from ``config.noise``); params hold
    the kind's parameters plus ``noise`` and ``sigma`` (background log-normal scale). ``config``: a `PlantConfig`
    or the name of one in CONFIGS.
    """
    cfg = plant_config(config)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if not 1 <= n_queries <= n_keys:
        raise ValueError(f"need 1 <= n_queries <= n_keys, got {n_queries}, {n_keys}")
    pos = n_keys - n_queries + np.arange(n_queries)
    offset = pos[:, None] - np.arange(n_keys)[None, :]  # [Q, K]
    if kind == "broad":
        return _broad(rng, offset)
    noise = _uniform(rng, cfg.noise) if noise is None else float(noise)
    if not 0 <= noise < 1:
        raise ValueError(f"noise is the background share of each row's mass, in [0, 1); got {noise}")
    sigma = _uniform(rng, cfg.sigma)
    weights, params = _STRUCTURE[kind](rng, pos, offset, cfg)
    jitter = _lognormal(rng, offset.shape, _uniform(rng, cfg.jitter))
    structure = np.where(offset >= 0, weights * jitter, 0.0)  # [Q, K]
    total = structure.sum(1, keepdims=True)
    structure = np.divide(structure, total, out=np.zeros_like(structure), where=total > 0)
    background = np.where(offset >= 0, _lognormal(rng, offset.shape, sigma), 0.0)
    background /= background.sum(1, keepdims=True)
    share = np.where(total > 0, 1 - noise, 0.0)  # [Q, 1] structure share of each row
    return share * structure + (1 - share) * background, params | {"noise": noise, "sigma": sigma}


def labelled_heads(path: str) -> list[tuple[str, np.ndarray, dict]]:
    """Hand-labelled heads of real runs (tests/data/real_heads.npz): ``(kind, attn[T, T], meta)`` per head.

    The file holds each map's lower triangle (float16, ``maps[N, T(T+1)/2]``), ``seq_len`` T and ``meta`` (JSON: per
    head model, content_type, layer, head and the kind it was labelled by eye).
    """
    data = np.load(path)
    t, meta = int(data["seq_len"]), json.loads(str(data["meta"]))
    rows, cols = np.tril_indices(t)
    out = []
    for values, info in zip(data["maps"], meta, strict=True):
        attn = np.zeros((t, t))
        attn[rows, cols] = values.astype(np.float64)
        out.append((info["kind"], attn / attn.sum(1, keepdims=True), info))
    return out


def plant_config(config: PlantConfig | str) -> PlantConfig:
    """A `PlantConfig`, or the one CONFIGS names."""
    if isinstance(config, PlantConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"unknown planted-head configuration {config!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[config]


def random_shape(
    rng: np.random.Generator,
    min_keys: int = 64,
    max_keys: int = 256,
    short_queries: float = 0.25,
) -> tuple[int, int]:
    """(Q, K): K ~ U{min_keys..max_keys}; Q = K, or with probability ``short_queries`` Q ~ U{16..K-1}."""
    k = int(rng.integers(min_keys, max_keys + 1))
    q = int(rng.integers(min(16, k - 1), k)) if rng.random() < short_queries and k > 1 else k
    return q, k


def plant_batch(
    n: int, rng: np.random.Generator, kinds: tuple[str, ...] = KINDS, config: PlantConfig | str = BASE
) -> list[tuple[str, np.ndarray, dict]]:
    """``n`` planted maps ``(kind, attn[Q, K], params)`` of one configuration, kinds in turn."""
    cfg = plant_config(config)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        shape = random_shape(rng, *cfg.keys, cfg.short_queries)
        out.append((kind, *plant_head(kind, *shape, rng, config=cfg)))
    return out
