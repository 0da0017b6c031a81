"""The champion rule on hand-made phase4_benchmark tables: eligible, ineligible, ties, none eligible."""

import json

import pandas as pd
import pytest

from sparselens.benchmark.champion import (
    DECODE_TOLERANCE,
    RULE_VERSION,
    TIE_RATIO,
    choose_champion,
    write_champion,
)
from sparselens.storage import ModelNotFoundError, RunStore

CTS = ("code", "prose")
LENS = (64, 256)


def rows(model, high=1.0, decode_ms=10.0, cache=100.0, err=1e-7, tasks=None, lens=LENS, context=512):
    out = []
    for ct in CTS:
        for t in lens:
            out.append(dict(model=model, metric="loss_ratio_vs_dsa", seq_len=t, content_type=ct, value=1.0,
                            low=min(high, 1.0) - 0.01, high=high))  # fmt: skip
    out.append(dict(model=model, metric="decode_error_ratio", seq_len=64, content_type="all", value=err))
    out.append(dict(model=model, metric="decode_ms_per_token", seq_len=context, content_type="all", value=decode_ms))
    out.append(dict(model=model, metric="decode_ms_per_token", seq_len=64, content_type="all", value=0.1))
    out.append(dict(model=model, metric="cache_bytes_per_token", seq_len=0, content_type="all", value=cache))
    for task, acc in (tasks or {}).items():
        out.append(dict(model=model, metric="task_accuracy", seq_len=64, content_type=task, value=acc))
    return out


def table(*parts):
    df = pd.DataFrame([r for part in parts for r in part])
    for col in ("low", "high"):
        df[col] = df.get(col)
    return df.assign(family=df["model"], n=8, unit="x", interval="none")


def test_fastest_eligible_wins_and_dense_never_competes():
    t = table(rows("dense", decode_ms=1.0), rows("dsa", decode_ms=10.0), rows("static", high=1.009, decode_ms=4.0))
    d = choose_champion(t)
    assert d.champion == "static" and d.version == RULE_VERSION and d.context == 512
    assert d.eligible == {"dsa": True, "static": True} and "dense" not in d.eligible
    assert "fastest eligible decode at 512" in d.reason


@pytest.mark.parametrize(
    "bad, why",
    [
        (dict(high=1.011), "loss ratio to dsa up to 1.0110"),
        (dict(err=10 * DECODE_TOLERANCE), "decode differs from the full forward"),
        (dict(tasks={"induction": 0.77}), "task accuracy 0.770 < dsa's 0.800"),
        (dict(lens=(64,)), "no loss interval against dsa for code at 256"),
    ],
    ids=["loss", "decode", "task", "missing_length"],
)
def test_an_ineligible_model_loses_even_when_fastest(bad, why):
    fast = rows("fast", decode_ms=1.0, **({"tasks": {"induction": 0.8}} | bad))
    t = table(rows("dsa", tasks={"induction": 0.8}), fast)
    d = choose_champion(t)
    assert d.champion == "dsa" and not d.eligible["fast"]
    assert any(why in r for r in d.reasons["fast"]), d.reasons["fast"]


def test_task_accuracy_two_points_below_is_still_eligible():
    t = table(rows("dsa", tasks={"induction": 0.8}), rows("fast", decode_ms=1.0, tasks={"induction": 0.781}))
    assert choose_champion(t).champion == "fast"


def test_ties_go_to_fewer_cache_bytes():
    a = rows("a_big", decode_ms=5.0, cache=200.0)
    b = rows("b_small", decode_ms=5.0 * (TIE_RATIO - 0.005), cache=120.0)  # slower, but within the tie ratio
    d = choose_champion(table(rows("dsa"), a, b))
    assert d.champion == "b_small" and "fewest cache bytes" in d.reason
    c = rows("c_fast", decode_ms=5.0 / (TIE_RATIO + 0.01), cache=300.0)  # outside the tie: speed decides
    assert choose_champion(table(rows("dsa"), a, b, c)).champion == "c_fast"


def test_none_eligible_keeps_dsa():
    t = table(rows("dsa", err=1.0), rows("x", high=1.5, decode_ms=1.0))
    d = choose_champion(t)
    assert d.champion == "dsa" and not any(d.eligible.values()) and "no model is eligible" in d.reason


def test_champion_json_and_load_model(tiny_run, run_copy):
    store = run_copy(tiny_run)
    with pytest.raises(ModelNotFoundError, match="sparselens phase benchmark"):
        store.load_model("champion")
    t = table(rows("dense"), rows("dsa", decode_ms=2.0))
    d = write_champion(store, t)
    record = json.loads(store.read_text("champion.json"))
    assert record["champion"] == d.champion == "dsa" and record["version"] == RULE_VERSION
    assert "lowest median `decode_ms_per_token`" in record["rule"] and len(record["inputs"]) == len(t)
    model = RunStore(store.fs.unstrip_protocol(store.root), store.run_id).load_model("champion")
    assert model.cfg.attention == "dsa"
