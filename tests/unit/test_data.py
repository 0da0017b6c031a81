"""Tests for sparselens.data: tokenizer, corpora splits, synthetic ground truth, batches and held-out samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparselens.data import (
    CONTENT_TYPES,
    CORPORA,
    TASKS,
    VOCAB_SIZE,
    corpus_stream,
    decode,
    encode,
    flatten_needed,
    generate,
    load_corpus,
    normalize_mix,
    sample_window,
    stack_tokens,
    train_batch,
    validation_samples,
)
from sparselens.data.corpora import EXCLUDED_CODE_DIRS, MAX_CODE_FILE_BYTES, split_of
from sparselens.data.synthetic import BRACKET_PAIRS, DESIGN, ORIGINAL_DESIGN

LENGTHS = [2, 63, 111, 1000]
SEEDS = [0, 1, 7]
MIX_ALL = dict.fromkeys(CONTENT_TYPES, 1.0)


def _bytes(tokens: np.ndarray) -> bytes:
    return tokens.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    "text", ["", "hello", "naïve café ✓ 🙂", "line\n\ttab\x00nul"], ids=["empty", "ascii", "utf8", "ctl"]
)
def test_tokenizer_round_trip(text):
    ids = encode(text)
    assert ids.dtype == np.uint8 and ids.size == len(text.encode("utf-8"))
    assert decode(ids) == text
    assert decode(ids.astype(np.int64).tolist()) == text


def test_tokenizer_replaces_invalid_utf8_and_rejects_bad_ids():
    assert VOCAB_SIZE == 256
    assert decode(np.array([0x66, 0xFF, 0x6F])) == "f\ufffdo"
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        decode([65, 256])
    with pytest.raises(ValueError, match="1-D"):
        decode(np.zeros((2, 2), dtype=np.int64))


@pytest.mark.parametrize("name", CORPORA)
def test_corpus_splits_are_disjoint_and_deterministic(name):
    train, valid = load_corpus(name, "train"), load_corpus(name, "validation")
    train_ids, valid_ids = [d.doc_id for d in train], [d.doc_id for d in valid]
    assert train_ids == sorted(train_ids) and valid_ids == sorted(valid_ids)
    assert not set(train_ids) & set(valid_ids)
    assert 0.03 < len(valid_ids) / (len(train_ids) + len(valid_ids)) < 0.25
    assert all(split_of(i) == "validation" for i in valid_ids) and all(split_of(i) == "train" for i in train_ids)
    assert all(d.text_bytes.dtype == np.uint8 and not d.text_bytes.flags.writeable for d in train)
    assert [d.doc_id for d in load_corpus(name, "validation")] == valid_ids


def test_split_assignment_is_pinned():
    # sha1-based, so these never change across runs, machines or Python versions
    assert [split_of(i) for i in ("copy.py", "json/decoder.py", "strings", "specialnames")] == [
        "validation",
        "train",
        "validation",
        "train",
    ]


def test_code_corpus_respects_exclusions():
    docs = load_corpus("code", "train") + load_corpus("code", "validation")
    assert len(docs) > 300
    for doc in docs:
        assert not EXCLUDED_CODE_DIRS & set(doc.doc_id.split("/")[:-1]), doc.doc_id
        assert doc.doc_id.endswith(".py") and doc.text_bytes.size <= MAX_CODE_FILE_BYTES
    assert "json/decoder.py" in {d.doc_id for d in docs}


@pytest.mark.parametrize(
    ("name", "seq_len", "max_shared"), [("prose", 128, 0), ("code", 256, 2)], ids=["prose", "code"]
)
def test_validation_windows_do_not_occur_in_training_stream(name, seq_len, max_shared):
    # code keeps a few near-identical license headers (years differ), so a rare shared window is tolerated
    train_stream = _bytes(corpus_stream(name, "train"))
    valid_stream = _bytes(corpus_stream(name, "validation"))
    windows = [_bytes(s.tokens) for s in validation_samples(name, seq_len, 100)]
    assert all(window in valid_stream for window in windows)
    assert sum(window in train_stream for window in windows) <= max_shared


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="valid corpora are"):
        load_corpus("poetry", "train")
    with pytest.raises(ValueError, match="valid splits are"):
        load_corpus("code", "test")
    with pytest.raises(ValueError, match="valid content types are"):
        validation_samples("poetry", 16, 2)
    with pytest.raises(ValueError, match="valid content types are"):
        train_batch({"code": 1.0, "poetry": 1.0}, 16, 2, 0, 0)
    with pytest.raises(ValueError, match="valid tasks are"):
        generate("sorting", 16, 0)
    with pytest.raises(ValueError, match="text content type"):
        sample_window("induction", "train", 16, np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs",
    [dict(seq_len=0), dict(batch_size=0), dict(seed=-1), dict(step=2**32), dict(mix={"code": -1.0, "prose": 2.0})],
    ids=["seq_len", "batch_size", "seed", "step", "negative_weight"],
)
def test_train_batch_rejects_bad_arguments(kwargs):
    args = dict(mix=MIX_ALL, seq_len=16, batch_size=2, seed=0, step=0) | kwargs
    with pytest.raises(ValueError):
        train_batch(**args)


def test_too_long_window_and_bad_synthetic_arguments_raise():
    with pytest.raises(ValueError, match="shorter seq_len"):
        validation_samples("prose", 10_000_000, 1)
    with pytest.raises(ValueError, match="seed"):
        generate("induction", 16, -1)
    with pytest.raises(ValueError, match="length"):
        generate("induction", 1, 0)
    with pytest.raises(ValueError, match="not all 0"):
        normalize_mix({"code": 0.0})


def test_train_batch_is_a_function_of_seed_and_step():
    tokens, types = train_batch(MIX_ALL, 65, 12, seed=3, step=10)
    assert tokens.dtype == torch.int64 and tokens.shape == (12, 66)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < VOCAB_SIZE
    again, again_types = train_batch(dict(reversed(MIX_ALL.items())), 65, 12, seed=3, step=10)
    assert torch.equal(tokens, again) and types == again_types
    assert not torch.equal(tokens, train_batch(MIX_ALL, 65, 12, seed=3, step=11)[0])
    assert not torch.equal(tokens, train_batch(MIX_ALL, 65, 12, seed=4, step=10)[0])


def test_train_batch_follows_the_mix():
    _, types = train_batch({"prose": 1.0, "induction": 3.0}, 8, 400, seed=0, step=0)
    assert set(types) == {"prose", "induction"}
    assert 0.65 < types.count("induction") / 400 < 0.85
    assert normalize_mix({"prose": 1.0, "induction": 3.0})["induction"] == pytest.approx(0.75)


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_validation_samples_are_fixed_and_work_at_4096(content_type):
    samples = validation_samples(content_type, 4096, 3)
    assert [s.sample_id for s in samples] == [f"{content_type}-4096-{i}" for i in range(3)]
    assert all(s.tokens.shape == (4097,) and s.tokens.dtype == np.int64 and s.seq_len == 4096 for s in samples)
    again = validation_samples(content_type, 4096, 3)
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(samples, again, strict=True))
    assert len({_bytes(s.tokens) for s in samples}) == 3
    other = validation_samples(content_type, 4096, 3, seed=1)
    assert other[0].sample_id == f"{content_type}-4096-s1-0"
    assert not np.array_equal(other[0].tokens, samples[0].tokens)
    if content_type in CORPORA:
        assert all(s.needed is None for s in samples)
    else:
        assert all(len(s.needed) == 4096 for s in samples)
    assert stack_tokens(samples).shape == (3, 4097)


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_splits_use_disjoint_seed_streams(task):
    train = {_bytes(generate(task, 64, seed, "train").tokens) for seed in range(20)}
    valid = {_bytes(s.tokens) for s in validation_samples(task, 63, 20)}
    assert len(train) == 20 and len(valid) == 20 and not train & valid
    assert np.array_equal(generate(task, 64, 5).tokens, generate(task, 64, 5).tokens)
    for seed in range(20):  # the same seed in the two splits draws from different streams
        assert not np.array_equal(
            generate(task, 64, seed, "train").tokens, generate(task, 64, seed, "validation").tokens
        )


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", TASKS)
def test_needed_positions_are_causal(task, length):
    for seed in SEEDS:
        sample = generate(task, length, seed)
        assert sample.tokens.shape == (length,) and sample.tokens.dtype == np.uint8
        assert len(sample.needed) == length - 1
        for t, keys in enumerate(sample.needed):
            assert keys.dtype == np.int32 and np.all((keys >= 0) & (keys <= t)), (t, keys)
        query_pos, key_pos = flatten_needed(sample.needed)
        assert query_pos.size == key_pos.size == sum(len(k) for k in sample.needed)


def _query_positions(tokens: bytes) -> tuple[dict[bytes, int], list[tuple[int, bytes]]]:
    """Independent parse: definitions {key: position of first value digit}, queries [(first value position, key)]."""
    definitions_end = tokens.index(b"|")
    definitions = {}
    for start in range(0, definitions_end, 9):
        definitions[tokens[start + 1 : start + 4]] = start + 6
    queries = [(i + 6, tokens[i + 1 : i + 4]) for i in range(definitions_end + 1, len(tokens), 9)]
    return definitions, queries


@pytest.mark.parametrize("seed", SEEDS)
def test_labelled_recall_needed_positions_hold_the_target_value(seed):
    sample = generate("assoc_recall", 1000, seed, design=ORIGINAL_DESIGN)
    tokens = _bytes(sample.tokens)
    definitions, queries = _query_positions(tokens)
    checked = 0
    for value_pos, key in queries:
        for j in range(2):
            target = value_pos + j
            if target >= len(tokens):
                continue
            keys = sample.needed[target - 1]
            assert keys.tolist() == [definitions[key] + j]
            assert tokens[keys[0]] == tokens[target]
            checked += 1
    assert checked > 50
    total = sum(len(k) for k in sample.needed)
    assert total == checked


@pytest.mark.parametrize("seed", SEEDS)
def test_induction_needed_key_is_the_next_token_of_the_earlier_copy(seed):
    sample = generate("induction", 1000, seed)
    tokens = sample.tokens
    hits = 0
    for t, keys in enumerate(sample.needed):
        for k in keys:
            assert tokens[k] == tokens[t + 1] and tokens[k - 1] == tokens[t]
            hits += 1
    assert hits > 200


@pytest.mark.parametrize("seed", SEEDS)
def test_brackets_needed_key_is_the_matching_opener(seed):
    sample = generate("brackets", 1000, seed)
    tokens = sample.tokens.tolist()
    openers = {o: c for o, c in BRACKET_PAIRS}
    closers = set(openers.values())
    stack = []
    for pos, tok in enumerate(tokens):
        keys = sample.needed[pos - 1].tolist() if pos else []
        if tok in openers:
            stack.append(pos)
        if tok in closers:
            opener = stack.pop()
            assert keys == [opener] and openers[tokens[opener]] == tok
        else:
            assert keys == []
    assert sum(len(k) for k in sample.needed) > 100


INDUCTION_DESIGNS = {
    "default": DESIGN,
    "original": ORIGINAL_DESIGN,
    "distinct94": DESIGN.with_changes(induction_max_span=16, induction_alphabet=(0x21, 0x7F)),
    "repeats3": DESIGN.with_changes(induction_repeats=3, induction_max_gap=2.0),
    "random_repeats2": ORIGINAL_DESIGN.with_changes(induction_repeats=2, induction_max_gap=0.5),
}


@pytest.mark.parametrize("design", list(INDUCTION_DESIGNS.values()), ids=list(INDUCTION_DESIGNS))
def test_induction_designs_keep_needed_exact(design):
    for seed in SEEDS:
        sample = generate("induction", 500, seed, design=design)
        tokens = sample.tokens
        answers = 0
        for t, keys in enumerate(sample.needed):
            if not len(keys):
                continue
            answers += 1
            assert len(keys) <= design.induction_repeats
            for k in keys:  # every listed key holds the target and follows an earlier copy of the current byte
                assert tokens[k] == tokens[t + 1] and tokens[k - 1] == tokens[t]
            if design.induction_distinct:  # the latest key's predecessor is the nearest earlier copy of the byte
                nearest = np.flatnonzero(tokens[:t] == tokens[t])[-1]
                assert nearest == keys[-1] - 1
        assert answers > 100


def test_distinct_spans_have_no_repeated_byte():
    sample = generate("induction", 400, 3)
    copies = [t + 1 for t, keys in enumerate(sample.needed) if len(keys)]  # answer targets
    # a copy run's bytes (targets plus the byte before the first one) are all different
    runs = np.split(np.array(copies), np.flatnonzero(np.diff(copies) != 1) + 1)
    for run in runs:
        span = sample.tokens[run[0] - 1 : run[-1] + 1]
        assert len(set(span.tolist())) == span.size


def _parse_recall_pairs(tokens: bytes) -> dict[int, int]:
    """Independent parse of the "pairs" format: {answer input position t: position of the defining value}."""
    expected, i = {}, 0
    while i < len(tokens):
        defs = {}
        while i < len(tokens) and tokens[i] != ord("|"):
            defs[tokens[i]] = i + 1
            i += 2
        i += 1
        for _ in range(len(defs)):
            if i + 1 < len(tokens):
                expected[i] = defs[tokens[i]]
            i += 2
    return expected


RECALL_DESIGNS = {
    "default": DESIGN,
    "digits64": DESIGN.with_changes(recall_letter_values=False, recall_key_alphabet=(0x21, 0x7F), recall_max_pairs=64),
    "digits10": DESIGN.with_changes(recall_letter_values=False, recall_max_pairs=10),
}


@pytest.mark.parametrize("design", list(RECALL_DESIGNS.values()), ids=list(RECALL_DESIGNS))
def test_recall_pairs_needed_is_the_latest_definition(design):
    for seed in SEEDS:
        sample = generate("assoc_recall", 600, seed, design=design)
        text = _bytes(sample.tokens)
        expected = _parse_recall_pairs(text)
        got = {t: keys.tolist() for t, keys in enumerate(sample.needed) if len(keys)}
        assert got == {t: [v] for t, v in expected.items()}
        assert all(text[v] == text[t + 1] for t, v in expected.items())
        assert all(chr(text[v]).isdigit() != design.recall_letter_values for v in expected.values())
        assert len(got) > 60


def test_recall_letter_values_make_every_block_byte_distinct():
    chunks = _bytes(generate("assoc_recall", 400, 1).tokens).split(b"|")  # defs | queries + next defs | ...
    n_previous, sizes = 0, []
    for chunk in chunks[:-1]:
        definitions = chunk[2 * n_previous :]  # the previous block's queries come first
        assert len(set(definitions)) == len(definitions) <= 2 * DESIGN.recall_max_pairs
        n_previous = len(definitions) // 2
        sizes.append(n_previous)
    assert sizes.count(DESIGN.recall_max_pairs) >= 5  # full blocks; only the one the sample's end cuts is smaller


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(span=3), "unknown task design fields"),
        (dict(recall_format="table"), "recall_format"),
        (dict(induction_min_span=9), "min_span <= max_span"),
        (dict(induction_max_span=16), "alphabet of more than 16"),
        (dict(recall_key_alphabet=(0x61, 0x62)), "too few key bytes"),
    ],
    ids=["unknown", "format", "span_order", "distinct_alphabet", "keys"],
)
def test_task_design_rejects_bad_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        DESIGN.with_changes(**changes)


def test_task_design_changes_batches():
    other = DESIGN.with_changes(induction_max_span=6)
    a, _ = train_batch({"induction": 1.0}, 64, 4, seed=0, step=0)
    b, _ = train_batch({"induction": 1.0}, 64, 4, seed=0, step=0, design=other)
    assert not torch.equal(a, b)
