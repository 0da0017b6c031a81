"""Every Prefect task has the cache policy and result persistence that the README's table states: NO_CACHE (tasks
take run ids and roots, never tensors; the run store is the cache) and no persisted result."""

import importlib
import pkgutil
from pathlib import Path

from prefect import Task
from prefect.cache_policies import NO_CACHE

import sparselens.tasks

README = Path(__file__).resolve().parents[2] / "README.md"


def all_tasks() -> dict[str, Task]:
    tasks = {}
    for info in pkgutil.iter_modules(sparselens.tasks.__path__):
        module = importlib.import_module(f"sparselens.tasks.{info.name}")
        tasks |= {t.name: t for t in vars(module).values() if isinstance(t, Task)}
    return tasks


def test_every_task_has_no_cache_and_no_persisted_result():
    tasks = all_tasks()
    assert len(tasks) >= 15, sorted(tasks)
    for name, t in tasks.items():
        assert type(t.cache_policy) is type(NO_CACHE), f"task {name} has cache policy {t.cache_policy!r}"
        assert not t.persist_result, f"task {name} persists its result"


def test_readme_states_the_policy_of_every_task():
    section = README.read_text().split("Results and caching, per task")[1]
    missing = [name for name in all_tasks() if f"`{name}`" not in section]
    assert not missing, f"README's task table lacks {missing}"
