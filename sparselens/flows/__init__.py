"""Prefect flows, one per phase, and the `pipeline` parent flow. Importing a flow module imports Prefect."""

from importlib import import_module

from sparselens.config import PHASE_PARAMS, PHASES


def phase_flow(name: str):
    """(flow, parameter model class) of phase `name`; the flow lives in `sparselens.flows.<name>`."""
    if name not in PHASE_PARAMS:
        raise ValueError(f"unknown phase {name!r}; choose one of {PHASES}")
    return getattr(import_module(f"sparselens.flows.{name}"), name), PHASE_PARAMS[name]


__all__ = ["PHASES", "phase_flow"]
