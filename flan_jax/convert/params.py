"""Fitting foreign parameter trees onto a flan_jax network: names, shapes, layer stacking, dtypes.

Converters produce flat `{"encoder/layers_0/attention/query/kernel": array}` dicts in the unscanned
T5X naming; `fit_params` checks them against the network's own parameter shapes (from
`jax.eval_shape` of its init, no allocation), stacks `layers_N` into `layers` for scanned configs,
reshapes where only the head split differs (T5X keeps `[embed, heads*kv]` kernels flat), and reports
every mismatch in one error. `unstack_layers` does the reverse for export.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

_LAYER = re.compile(r"^(.*/)?layers_(\d+)(/.*)$")
_MAX_REPORTED = 12


class ParamMismatchError(ValueError):
  """A checkpoint's parameters do not fit the network built from the config."""


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def network_param_shapes(family: str, config: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat shapes/dtypes of the network's params for a config, without allocating them."""
  tokens = jax.ShapeDtypeStruct((1, 4), np.int32)
  rng = jax.random.PRNGKey(0)
  if family == "t5":
    from flan_jax.models import t5  # pylint: disable=import-outside-toplevel
    module = t5.Transformer(config)
    init = lambda t: module.init(rng, t, t, t, enable_dropout=False)
  else:
    from flan_jax.models import decoder  # pylint: disable=import-outside-toplevel
    module = decoder.DecoderOnly(config)
    init = lambda t: module.init(rng, t, t, enable_dropout=False)
  abstract = jax.eval_shape(lambda t: nn.meta.unbox(init(t)["params"]), tokens)
  return flatten(abstract)


def fit_params(flat: Mapping[str, np.ndarray], expected: Mapping[str, jax.ShapeDtypeStruct],
               source: str) -> dict[str, Any]:
  """Returns the nested params tree for the network, or raises ParamMismatchError listing problems.

  Args:
    flat: unscanned source params by T5X-style path.
    expected: `network_param_shapes(...)` of the target network.
    source: what the params came from, for the error message.
  """
  flat = stack_layers(flat, expected)
  problems = []
  for name in sorted(set(expected) - set(flat)):
    problems.append(f"missing parameter {name}: expected shape {tuple(expected[name].shape)}")
  for name in sorted(set(flat) - set(expected)):
    problems.append(f"unexpected parameter {name} with shape {tuple(np.shape(flat[name]))}")
  fitted = {}
  for name in sorted(set(flat) & set(expected)):
    value, want = np.asarray(flat[name]), tuple(expected[name].shape)
    if value.shape != want:
      if value.size != int(np.prod(want)):
        problems.append(f"parameter {name}: expected shape {want}, found {value.shape}")
        continue
      value = value.reshape(want)
    fitted[name] = value.astype(expected[name].dtype)
  if problems:
    shown = "\n  ".join(problems[:_MAX_REPORTED])
    more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    raise ParamMismatchError(
        f"{source} does not fit the model config ({len(problems)} problems):\n  {shown}{more}\n"
        f"Fix: pass the config the checkpoint was trained with (--gin_file / model_spec.json), "
        f"or check that the checkpoint is complete.")
  return unflatten(fitted)


def stack_layers(flat: Mapping[str, Any], expected: Mapping[str, Any] | None = None,
                 axis: int = 0) -> dict[str, Any]:
  """`.../layers_N/x` → `.../layers/x` stacked on `axis`: every layer, or (given the network's
  `expected` names) those the network keeps stacked. The reverse of `unstack_layers`."""
  groups: dict[str, dict[int, Any]] = {}
  out = {}
  for name, value in flat.items():
    match = _LAYER.match(name)
    stacked = match and f"{match.group(1) or ''}layers{match.group(3)}"
    if stacked and (expected is None or (stacked in expected and name not in expected)):
      groups.setdefault(stacked, {})[int(match.group(2))] = value
    else:
      out[name] = value
  for stacked, layers in groups.items():
    out[stacked] = np.stack([np.asarray(layers[i]) for i in sorted(layers)], axis=axis)
  return out


def unstack_layers(flat: Mapping[str, Any], axis: int = 0) -> dict[str, np.ndarray]:
  """The reverse of scanning: `.../layers/x` with a layer axis → `.../layers_N/x`.

  flan_jax stacks layers on axis 0; T5X's scanned models on `param_scan_axis` (1 by default).
  """
  out = {}
  for name, value in flat.items():
    value = np.asarray(value)
    stacked = is_stacked(name)
    if stacked and value.ndim <= axis:
      raise ParamMismatchError(f"stacked parameter {name} with shape {value.shape} has no layer "
                               f"axis {axis}; pass the scan axis the checkpoint was written with")
    for n in range(value.shape[axis] if stacked else 0):
      out[layer_name(name, n)] = np.take(value, n, axis=axis)
    if not stacked:
      out[name] = value
  return out


def is_stacked(name: str) -> bool:
  """Whether `name` is a scanned (stacked) parameter: a `layers` component in its path."""
  return "layers" in name.split("/")


def layer_name(stacked_name: str, index: int) -> str:
  """`encoder/layers/x` → `encoder/layers_<index>/x`."""
  parts = stacked_name.split("/")
  i = parts.index("layers")
  return "/".join(parts[:i] + [f"layers_{index}"] + parts[i + 1:])


def count_layers(flat: Mapping[str, Any], stack: str) -> int:
  """Number of `layers_N` blocks under `stack` (e.g. 'encoder') in unscanned params."""
  found = {int(m.group(2)) for name in flat
           if (m := _LAYER.match(name)) and (m.group(1) or "") == (f"{stack}/" if stack else "")}
  return max(found) + 1 if found else 0
