"""Examples-proportional mixing with per-task caps, and the arithmetic of nested mixtures.

A task's rate is `min(cap, num_examples)`: big datasets stop dominating at the cap, small ones keep
their natural share. Mixtures nest: a sub-mixture given rate r inside a parent contributes r split
among its own entries in proportion to their rates (this is what `seqio.Mixture.get_rate` does), so
a leaf task's effective share is the product of the normalized rates along its path.
`leaf_shares` returns those shares for a registered mixture; they sum to 1.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import seqio

# Per-task caps on the mixing rate (number of examples), Longpre et al. (2023).
CAPS = {"flan2021": 30_000, "t0": 20_000, "niv2": 5_000, "cot": 100_000, "dialog": 200_000}


def capped_rate(num_examples: Optional[int], cap: int) -> float:
  """`min(cap, num_examples)`; an unknown count (None) counts as the cap."""
  if num_examples is not None and num_examples <= 0:
    raise ValueError(f"num_examples must be positive, got {num_examples}.")
  return float(cap if num_examples is None else min(cap, num_examples))


def register_mixture(name: str, entries: Sequence[tuple[str, float]]) -> str:
  """Registers (or replaces) mixture `name` over `(task_or_mixture_name, rate)` entries."""
  entries = [(n, float(r)) for n, r in entries if r > 0]
  if not entries:
    raise ValueError(f"Mixture '{name}' has no entries with a positive rate.")
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, entries)
  return name


def leaf_shares(mixture: Union[str, seqio.Mixture]) -> dict[str, float]:
  """{leaf task name: share of the stream} for a (possibly nested) mixture; shares sum to 1.

  Same arithmetic as `seqio.Mixture.get_rate` / `total_rate`, computed top-down in one pass (seqio's
  per-task lookup is quadratic in the number of tasks, seconds for the full collection).
  """
  if isinstance(mixture, str):
    mixture = seqio.get_mixture_or_task(mixture)
  if isinstance(mixture, seqio.Task):
    return {mixture.name: 1.0}
  rates = _own_rates(mixture)
  total = sum(rates.values())
  shares: dict[str, float] = {}
  for name, rate in rates.items():
    if name in seqio.MixtureRegistry.names():
      for leaf, share in leaf_shares(name).items():
        shares[leaf] = shares.get(leaf, 0.0) + rate / total * share
    else:
      shares[name] = shares.get(name, 0.0) + rate / total
  return shares


def _own_rates(mixture: seqio.Mixture) -> dict[str, float]:
  rates = {}
  for name, rate in mixture.rate_per_task_name.items():
    rates[name] = float(rate(seqio.get_mixture_or_task(name)) if callable(rate) else rate)
  return rates


def submixture_shares(mixture: Union[str, seqio.Mixture]) -> dict[str, float]:
  """{direct entry name: normalized rate} of a mixture's own level (tasks and sub-mixtures)."""
  if isinstance(mixture, str):
    mixture = seqio.get_mixture_or_task(mixture)
  rates = _own_rates(mixture)
  total = sum(rates.values())
  return {name: rate / total for name, rate in rates.items()}


def proportional_entries(counts: Mapping[str, Optional[int]], cap: int) -> list[tuple[str, float]]:
  """`(task, min(cap, count))` entries for tasks with known (or unknown → cap) example counts."""
  return [(name, capped_rate(count, cap)) for name, count in counts.items()]
