"""Finding registered SeqIO tasks and mixtures by name.

`ensure_registered()` imports every module under `flan_jax.tasks` and `flan_jax.mixtures` (found with
pkgutil, so modules added later are picked up without editing a list). Importing a module registers
its tasks; Python's module cache makes repeated calls free.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Union

import seqio

_PACKAGES = ("flan_jax.tasks", "flan_jax.mixtures")


def registered_modules() -> list[str]:
  """Names of all task and mixture modules, tasks first (mixtures build on tasks)."""
  names = []
  for package_name in _PACKAGES:
    package = importlib.import_module(package_name)
    names += sorted(f"{package_name}.{m.name}" for m in pkgutil.iter_modules(package.__path__))
  return names


def ensure_registered() -> None:
  """Imports every task and mixture module so their SeqIO registrations exist (idempotent)."""
  for name in registered_modules():
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except
      raise ImportError(f"Registering tasks failed while importing {name}: "
                        f"{type(e).__name__}: {e}") from e


def registered_names() -> list[str]:
  """All registered task and mixture names, sorted."""
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_mixture_or_task(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered task or mixture `name`; an unknown name raises one error with close names."""
  ensure_registered()
  if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  names = registered_names()
  close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
  hint = (f"Did you mean: {', '.join(close)}?" if close
          else f"{len(names)} names are registered, e.g. {', '.join(names[:5])}.")
  raise ValueError(f"Unknown task or mixture '{name}'. {hint} Tasks and mixtures are registered by "
                   "the modules in flan_jax/tasks and flan_jax/mixtures.")
