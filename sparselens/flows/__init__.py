"""Prefect flows, one per phase, and the `pipeline` parent flow. Importing this package imports Prefect."""

PHASES = ("train", "evaluate")


def phase_flow(name: str):
    """The flow object of phase `name`."""
    if name == "train":
        from sparselens.flows.train import train

        return train
    if name == "evaluate":
        from sparselens.flows.evaluate import evaluate

        return evaluate
    raise ValueError(f"unknown phase {name!r}; choose one of {PHASES}")
