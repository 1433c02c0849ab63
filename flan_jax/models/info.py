"""`python -m flan_jax.models.info [--json] [NAME ...]`: parameter counts of the shipped configs.

Counts come from the shapes `init` would create (`jax.eval_shape`, nothing is allocated; layers
are scanned while counting so even PaLM 540B traces in seconds) and are printed beside the
published sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from flan_jax.models import configs


def count_params(config: configs.T5Config | configs.DecoderConfig) -> int:
  """Number of parameters the network for `config` has."""
  from flan_jax.models import decoder, t5  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(config, scan_layers=True, remat_policy="none")
  rng = jax.random.PRNGKey(0)
  if isinstance(config, configs.T5Config):
    module = t5.Transformer(config)
    init = lambda tokens: module.init(rng, tokens, tokens, tokens, enable_dropout=False)
  else:
    module = decoder.DecoderOnly(config)
    init = lambda tokens: module.init(rng, tokens, tokens, enable_dropout=False)
  shapes = jax.eval_shape(lambda tokens: nn.meta.unbox(init(tokens)["params"]),
                          jax.ShapeDtypeStruct((1, 2), jnp.int32))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def describe(name: str) -> dict[str, Any]:
  """{name, family, params, published, relative_error} for one shipped config."""
  config = configs.get_config(name)
  params = count_params(config)
  published = configs.PUBLISHED_PARAMS.get(name)
  return {
      "name": name,
      "family": "t5" if isinstance(config, configs.T5Config) else "decoder",
      "params": params,
      "published": published,
      "relative_error": None if published is None else abs(params - published) / published,
  }


def _human(n: float | None) -> str:
  if n is None:
    return "-"
  for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.2f}{unit}"
  return str(int(n))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m flan_jax.models.info", description=__doc__)
  parser.add_argument("names", nargs="*", help="configs to show (default: all shipped)")
  parser.add_argument("--json", action="store_true", help="one JSON list instead of a table")
  args = parser.parse_args(argv)
  try:
    rows = [describe(name) for name in (args.names or configs.CONFIGS)]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(rows, indent=1))
    return 0
  print(f"{'config':<16}{'family':<9}{'params':>14}{'':>4}{'published':>10}{'error':>8}")
  for r in rows:
    error = "-" if r["relative_error"] is None else f"{100 * r['relative_error']:.2f}%"
    print(f"{r['name']:<16}{r['family']:<9}{r['params']:>14,}{_human(r['params']):>9}"
          f"{_human(r['published']):>9}{error:>8}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
