"""The monitor: time the champion against the dense model in one process, keep every raw sample, decide.

Each timed sample is one request per model (prefill `context` held-out tokens through a fresh cache, then
`decode_tokens` one-token steps), the two models alternating which goes first, with fixed torch threads. Every
sample pair is appended to `monitor_history` as soon as it is measured (one atomically published file), so a
killed run loses nothing it measured; its verdict rows go to `monitor_verdicts` only when it finishes, and only
finished runs that did not regress form the history later runs are compared with (same host fingerprint,
champion, context and decode_tokens). A kernel override is recorded with every row but does not split the
history: a run on other kernels is judged against the default kernels' history, which is how a slower kernel shows
up. The rule is in verdict.py. A regression is a finding: the result says so, nothing raises.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sparselens.benchmark import verdict as rule
from sparselens.benchmark.host import fingerprint, host_info
from sparselens.benchmark.models import load_variant
from sparselens.benchmark.quality import sample_losses
from sparselens.benchmark.timing import held_out_tokens
from sparselens.config import MonitorConfig, Preset
from sparselens.data.dataset import CONTENT_TYPES
from sparselens.models.gpt import GPT
from sparselens.storage import SCHEMAS, RunStore
from sparselens.threads import torch_threads

HISTORY, VERDICTS = "monitor_history", "monitor_verdicts"
TIMED = ("prefill_ms", "decode_ms_per_token")
DETERMINISTIC = ("heldout_loss", "cache_bytes_per_token")
KEY = ("fingerprint", "champion", "context", "decode_tokens")  # what must match for samples to compare


@dataclass
class MonitorResult:
    """What one monitor run found; `verdicts` holds one record per metric and one for 'overall'."""

    monitor_run: str
    champion: str
    verdict: str
    host: dict
    context: dict
    verdicts: list[dict] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    def table(self) -> pd.DataFrame:
        cols = ["metric", "verdict", "p_value", "change", "n_current", "n_history"]
        return pd.DataFrame(self.verdicts)[cols]


def new_monitor_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


@torch.no_grad()
def request_ms(model: GPT, tokens: torch.Tensor, context: int) -> tuple[float, float, int]:
    """(prefill ms, decode ms per token, cache bytes per position) of one request over tokens [1, context + n]."""
    cache = model.new_cache(1)
    t0 = time.perf_counter()
    model(tokens[:, :context], cache=cache)
    t1 = time.perf_counter()
    for t in range(context, tokens.shape[1]):
        model(tokens[:, t : t + 1], cache=cache)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(1, tokens.shape[1] - context), cache.kv_bytes() // cache.length


class Recorder:
    """Appends rows of one monitor run to `monitor_history`, each call one atomically published file."""

    def __init__(self, store: RunStore, context: dict, host: dict) -> None:
        self.store, self.context = store, context
        self.host = {k: host[k] for k in ("cpu_model", "cores", "threads", "torch_version")}

    def append(self, rows: list[dict]) -> None:
        df = pd.DataFrame([self.context | self.host | r | {"measured_at": _now()} for r in rows])
        self.store.append_table(HISTORY, df)


def _sample_rows(role: str, model: str, sample: int, batch: int, prefill: float, decode: float) -> list[dict]:
    base = {"role": role, "model": model, "sample": sample, "batch": batch}
    return [
        base | {"metric": "prefill_ms", "value": prefill},
        base | {"metric": "decode_ms_per_token", "value": decode},
    ]


def timed_batch(models: dict[str, tuple[str, GPT]], tokens, cfg: MonitorConfig, batch: int, rec: Recorder) -> None:
    """cfg.samples alternating samples (even: champion first, odd: dense first), each appended when measured."""
    roles = list(models)
    for i in range(cfg.samples):
        rows = []
        for role in roles if i % 2 == 0 else roles[::-1]:
            name, model = models[role]
            prefill, decode, _ = request_ms(model, tokens, cfg.context)
            rows += _sample_rows(role, name, batch * cfg.samples + i, batch, prefill, decode)
        rec.append(rows)


def deterministic(model: GPT, tokens: torch.Tensor, cfg: MonitorConfig, seq_len: int) -> dict[str, float]:
    """The champion's mean held-out loss on fixed samples at the training length, and its measured cache bytes."""
    n = cfg.loss_samples
    losses = np.concatenate([sample_losses(model, ct, seq_len, n, n) for ct in CONTENT_TYPES])
    return {"heldout_loss": float(losses.mean()), "cache_bytes_per_token": request_ms(model, tokens, cfg.context)[2]}


def log_ratios(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """log(champion / dense) per (monitor run, sample) of one timed metric; incomplete pairs are dropped."""
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        return np.zeros(0)
    pairs = rows.pivot_table(index=["monitor_run", "sample"], columns="role", values="value", aggfunc="first")
    if not {"champion", "dense"} <= set(pairs.columns):
        return np.zeros(0)
    pairs = pairs[["champion", "dense"]].dropna()
    return np.log(pairs["champion"].to_numpy() / pairs["dense"].to_numpy())


def good_history(store: RunStore, context: dict) -> pd.DataFrame:
    """History rows of finished, not regressed runs with the same key as `context` (empty when none)."""
    if not store.table_exists(HISTORY) or not store.table_exists(VERDICTS):
        return pd.DataFrame(columns=SCHEMAS[HISTORY].names)
    verdicts = store.read_table(VERDICTS)
    verdicts = verdicts[(verdicts["metric"] == "overall") & (verdicts["verdict"] != "regressed")]
    for k in KEY:
        verdicts = verdicts[verdicts[k] == context[k]]
    history = store.read_table(HISTORY)
    return history[history["monitor_run"].isin(set(verdicts["monitor_run"]))]


def _last_deterministic(history: pd.DataFrame) -> dict[str, float] | None:
    rows = history[history["metric"].isin(DETERMINISTIC)]
    if rows.empty:
        return None
    last = rows.sort_values("measured_at")["monitor_run"].iloc[-1]
    return rows[rows["monitor_run"] == last].set_index("metric")["value"].to_dict()


def _decide(store: RunStore, context: dict, history: pd.DataFrame, cfg: MonitorConfig) -> dict[str, dict]:
    mine = store.read_table(HISTORY, filters=[("monitor_run", "=", context["monitor_run"])])
    return {m: rule.decide_timing(log_ratios(mine, m), log_ratios(history, m), cfg) for m in TIMED}


def _verdict_rows(context: dict, decided: dict[str, dict]) -> pd.DataFrame:
    rows = [context | {"metric": m} | d for m, d in decided.items()]
    rows.append(context | {"metric": "overall", "verdict": rule.overall([d["verdict"] for d in decided.values()])})
    df = pd.DataFrame(rows).assign(rule_version=rule.RULE_VERSION, finished_at=_now())
    for name, default in (("p_value", np.nan), ("change", np.nan), ("n_current", 0), ("n_history", 0)):
        df[name] = df[name].fillna(default) if name in df else default
    return df


def run_monitor(store: RunStore, preset: Preset, kernel_backend: str | None = None, log=None) -> MonitorResult:
    """One monitor run on `store`'s champion against its dense model (module docstring); returns the finding."""
    cfg, log = preset.monitor, log or (lambda _msg: None)
    champion = store.champion_name()
    with torch_threads(cfg.threads):
        host = host_info(cfg.threads)
        context = {"run_id": store.run_id, "monitor_run": new_monitor_run_id(), "fingerprint": fingerprint(host)}
        context |= {"champion": champion, "kernel_backend": kernel_backend or "default"}
        context |= {"context": cfg.context, "decode_tokens": cfg.decode_tokens}
        history = good_history(store, context)
        rec, length = Recorder(store, context, host), cfg.context + cfg.decode_tokens
        models = {role: (name, load_variant(store, name, length, kernel_backend)) for role, name in
                  (("champion", champion), ("dense", "dense"))}  # fmt: skip
        tokens = held_out_tokens(length)[0]  # [1, context + decode_tokens]
        for _, model in models.values():
            request_ms(model, tokens, cfg.context)  # warm-up, not recorded
        now = deterministic(models["champion"][1], tokens, cfg, preset.train.seq_len)
        rec.append([{"role": "champion", "model": champion, "sample": -1, "batch": 0, "metric": k, "value": float(v)}
                    for k, v in now.items()])  # fmt: skip
        timed_batch(models, tokens, cfg, 0, rec)
        decided = _decide(store, context, history, cfg)
        if any(d["verdict"] == rule.UNDECIDED for d in decided.values()):
            log("undecided after one batch: measuring once more")
            timed_batch(models, tokens, cfg, 1, rec)
            decided = _decide(store, context, history, cfg)
    for d in decided.values():
        d["verdict"] = "inconclusive" if d["verdict"] == rule.UNDECIDED else d["verdict"]
    decided["deterministic"] = rule.decide_deterministic(now, _last_deterministic(history), cfg)
    verdicts = _verdict_rows(context, decided)
    store.append_table(VERDICTS, verdicts)
    overall = verdicts[verdicts["metric"] == "overall"]["verdict"].iloc[0]
    return MonitorResult(context["monitor_run"], champion, overall, host, context, verdicts.to_dict("records"))
