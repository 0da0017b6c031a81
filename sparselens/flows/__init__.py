"""Prefect flows, one per phase, and the `pipeline` parent flow. Importing a flow module imports Prefect."""

from importlib import import_module

# phase name -> (module, flow function, parameter model in that module or None for config.PhaseParams)
_PHASES = {
    "train": ("sparselens.flows.train", "train", "TrainParams"),
    "evaluate": ("sparselens.flows.evaluate", "evaluate", None),
    "capture": ("sparselens.flows.capture", "capture", "CaptureParams"),
    "interpret": ("sparselens.flows.interpret", "interpret", "InterpretParams"),
    "patterns": ("sparselens.flows.patterns", "patterns", "PatternsParams"),
}
PHASES = tuple(_PHASES)


def phase_flow(name: str):
    """(flow, parameter model class) of phase `name`."""
    if name not in _PHASES:
        raise ValueError(f"unknown phase {name!r}; choose one of {PHASES}")
    module_name, flow_name, params_name = _PHASES[name]
    module = import_module(module_name)
    if params_name is None:
        from sparselens.config import PhaseParams

        return getattr(module, flow_name), PhaseParams
    return getattr(module, flow_name), getattr(module, params_name)
