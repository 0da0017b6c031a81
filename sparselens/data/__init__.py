"""Byte tokenizer, offline corpora (stdlib code, pydoc prose) and synthetic tasks with needed-key ground truth."""

from sparselens.data.corpora import CORPORA, SPLITS, VALIDATION_FRACTION, Document, corpus_stream, load_corpus
from sparselens.data.dataset import (
    CONTENT_TYPES,
    Sample,
    check_content_type,
    normalize_mix,
    sample_window,
    stack_tokens,
    synthetic_sample,
    train_batch,
    validation_samples,
)
from sparselens.data.synthetic import TASKS, TaskSample, flatten_needed, generate
from sparselens.data.tokenizer import VOCAB_SIZE, decode, encode

__all__ = [
    "CONTENT_TYPES",
    "CORPORA",
    "SPLITS",
    "TASKS",
    "VALIDATION_FRACTION",
    "VOCAB_SIZE",
    "Document",
    "Sample",
    "TaskSample",
    "check_content_type",
    "corpus_stream",
    "decode",
    "encode",
    "flatten_needed",
    "generate",
    "load_corpus",
    "normalize_mix",
    "sample_window",
    "stack_tokens",
    "synthetic_sample",
    "train_batch",
    "validation_samples",
]
