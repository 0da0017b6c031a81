"""Models: a small GPT with dense or DSA attention, hook points and capture."""

from sparselens.config import ModelConfig
from sparselens.models.gpt import GPT, build_model
from sparselens.models.hooks import HookPoint, capture, hook_names

__all__ = ["GPT", "HookPoint", "ModelConfig", "build_model", "capture", "hook_names"]
