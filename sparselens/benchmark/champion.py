"""The champion: a pure, versioned rule over the `phase4_benchmark` table.

A model other than dense is eligible when
1. quality: at every content type and every length with a `loss_ratio_vs_dsa` row for DSA (T .. 4T), the upper
   end of its paired-bootstrap ratio interval to DSA is at most 1 + LOSS_TOLERANCE;
2. tasks: where DSA has `task_accuracy` rows, its accuracy is at most TASK_POINTS below DSA's on each task;
3. decoding: its `decode_error_ratio` (cached decode against one full forward) is at most DECODE_TOLERANCE.
Among the eligible, the lowest median `decode_ms_per_token` at the longest context wins; models within TIE_RATIO of
the fastest tie, and ties go to fewer `cache_bytes_per_token` (then to the name). When none is eligible, DSA stays.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pandas as pd

from sparselens.storage import RunStore
from sparselens.storage.store import CHAMPION_FILE

RULE_VERSION = "champion-rule/1"
LOSS_TOLERANCE = 0.01  # the loss-ratio interval's upper end may reach 1.01 x DSA
TASK_POINTS = 0.02  # task accuracy (a fraction) at most 2 points below DSA's
DECODE_TOLERANCE = 1e-5  # rms(err) / rms(ref) of cached decode against the full forward
TIE_RATIO = 1.02  # decode medians within 2% of the fastest count as a tie
FALLBACK = "dsa"
RULE = __doc__.split("\n", 2)[2].strip()


@dataclass(frozen=True)
class ChampionDecision:
    """The rule's outcome: the champion and, per model, why it is (in)eligible and what it was compared on."""

    champion: str
    version: str
    reason: str
    context: int | None  # the decode context compared at, tokens
    eligible: dict[str, bool]
    reasons: dict[str, list[str]] = field(default_factory=dict)
    decode_ms: dict[str, float] = field(default_factory=dict)
    cache_bytes: dict[str, float] = field(default_factory=dict)
    constants: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self) | {"rule": RULE}


def _values(table: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    rows = table[table["metric"] == metric]
    for name, value in where.items():
        rows = rows[rows[name] == value]
    return rows


def _quality_failures(table: pd.DataFrame, model: str) -> list[str]:
    ref = _values(table, "loss_ratio_vs_dsa", model=FALLBACK)
    mine = _values(table, "loss_ratio_vs_dsa", model=model).set_index(["content_type", "seq_len"])["high"]
    out = []
    for ct, t in zip(ref["content_type"], ref["seq_len"], strict=True):
        high = mine.get((ct, t))
        if high is None or pd.isna(high):
            out.append(f"no loss interval against dsa for {ct} at {t}")
        elif high > 1 + LOSS_TOLERANCE:
            out.append(f"loss ratio to dsa up to {high:.4f} > {1 + LOSS_TOLERANCE:g} for {ct} at {t}")
    if ref.empty:
        out.append("dsa has no loss_ratio_vs_dsa rows to compare against")
    return out


def _task_failures(table: pd.DataFrame, model: str) -> list[str]:
    ref = _values(table, "task_accuracy", model=FALLBACK).set_index(["content_type", "seq_len"])["value"]
    mine = _values(table, "task_accuracy", model=model).set_index(["content_type", "seq_len"])["value"]
    out = []
    for key, want in ref.items():
        got = mine.get(key)
        if got is None or pd.isna(got):
            out.append(f"no task accuracy for {key[0]} at {key[1]}")
        elif got < want - TASK_POINTS:
            out.append(f"task accuracy {got:.3f} < dsa's {want:.3f} - {TASK_POINTS:g} on {key[0]} at {key[1]}")
    return out


def _decode_failures(table: pd.DataFrame, model: str) -> list[str]:
    rows = _values(table, "decode_error_ratio", model=model)
    if rows.empty:
        return ["no decode_error_ratio row"]
    worst = rows["value"].max()
    return (
        []
        if worst <= DECODE_TOLERANCE
        else [f"decode differs from the full forward: {worst:.2e} > {DECODE_TOLERANCE:g}"]
    )


def choose_champion(table: pd.DataFrame) -> ChampionDecision:
    """Apply the rule (module docstring) to a phase4_benchmark table (or any frame with its columns)."""
    timings = _values(table, "decode_ms_per_token")
    context = int(timings["seq_len"].max()) if not timings.empty else None
    decode = _values(timings, "decode_ms_per_token", seq_len=context).set_index("model")["value"].to_dict()
    cache = _values(table, "cache_bytes_per_token").set_index("model")["value"].to_dict()
    models = [m for m in dict.fromkeys(table["model"]) if m != "dense"]
    reasons = {}
    for model in models:
        fails = _quality_failures(table, model) + _task_failures(table, model) + _decode_failures(table, model)
        if model not in decode:
            fails.append(f"no decode timing at {context}")
        reasons[model] = fails
    eligible = {m: not reasons[m] for m in models}
    constants = {"loss_tolerance": LOSS_TOLERANCE, "task_points": TASK_POINTS, "decode_tolerance": DECODE_TOLERANCE}
    constants["tie_ratio"] = TIE_RATIO
    common = dict(context=context, eligible=eligible, reasons=reasons, constants=constants)
    common |= dict(decode_ms={m: decode[m] for m in models if m in decode}, cache_bytes=cache)
    ok = [m for m in models if eligible[m]]
    if not ok:
        return ChampionDecision(FALLBACK, RULE_VERSION, "no model is eligible: dsa stays", **common)
    fastest = min(decode[m] for m in ok)
    tied = [m for m in ok if decode[m] <= fastest * TIE_RATIO]
    winner = min(tied, key=lambda m: (cache.get(m, float("inf")), m))
    why = f"fastest eligible decode at {context} tokens ({decode[winner]:.3f} ms/token)"
    if len(tied) > 1:
        why += f"; tied within {TIE_RATIO:g}x with {sorted(set(tied) - {winner})}, fewest cache bytes per token"
    return ChampionDecision(winner, RULE_VERSION, why, **common)


def champion_inputs(table: pd.DataFrame) -> list[dict]:
    """The rows the rule reads, as records (written beside the decision)."""
    used = ("loss_ratio_vs_dsa", "task_accuracy", "decode_error_ratio", "decode_ms_per_token", "cache_bytes_per_token")
    cols = ["model", "family", "metric", "seq_len", "content_type", "value", "low", "high", "n"]
    rows = table[table["metric"].isin(used)][cols]
    return json.loads(rows.to_json(orient="records"))


def write_champion(store: RunStore, table: pd.DataFrame) -> ChampionDecision:
    """Decide and write `champion.json` (decision, rule, version and its input rows) atomically."""
    decision = choose_champion(table)
    record = decision.to_dict() | {"run_id": store.run_id, "inputs": champion_inputs(table)}
    store.write_text(CHAMPION_FILE, json.dumps(record, indent=2))
    return decision
