"""Readers for T5X checkpoints: the legacy msgpack file, the tensorstore/zarr layout and Orbax's.

All hold the same tree, `{"target": params, "state": {"step", "param_states"}}` (under
`optimizer` in the legacy and tensorstore layouts, `_optimizer` in Orbax's):

- legacy: one flax msgpack file; arrays inline.
- tensorstore (released Flan-T5 checkpoints): `checkpoint` msgpack index whose leaves are tensorstore
  specs (`{"driver": "zarr", "kvstore": {"path": "target.encoder..."}, "metadata": {...}}`) and one
  zarr folder per array next to it.
- Orbax: `checkpoint` msgpack index whose leaves are `PLACEHOLDER://<folder>` strings, one zarr
  folder per array next to it.
- Orbax with OCDBT (newer Orbax's default): `_METADATA` (JSON tree) and `manifest.ocdbt` +
  `ocdbt.process_*/` (one key-value store for all arrays); read through Orbax itself.

Scanned T5X models (`scan_layers=True`) stack each layer parameter under `encoder/layers/...`
with the layer axis at the model's `param_scan_axis` (T5X's default 1); see `unscan`.

T5X parameter names are flan_jax's (docs/ARCHITECTURE.md), so the params need no renaming; see
`flan_jax.convert.params.fit_params` for the shape checks against the network.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import serialization

from flan_jax.convert import params as params_lib
from flan_jax.convert import zarr

INDEX_FILE = "checkpoint"
OCDBT_FILES = ("manifest.ocdbt", "_METADATA")  # either marks an Orbax (OCDBT) step folder
T5X_PARAM_SCAN_AXIS = 1  # T5X's default `param_scan_axis` for scanned layers
_PLACEHOLDER = "PLACEHOLDER://"
_STEP_DIR = re.compile(r"^(?:checkpoint_)?(\d+)$")


@dataclasses.dataclass
class T5XCheckpoint:
  """A T5X checkpoint read into numpy: model params, Adafactor state (may be empty) and step."""
  params: dict[str, Any]
  param_states: dict[str, Any]
  step: int
  layout: str  # 'legacy' | 'tensorstore' | 'orbax' | 'orbax_ocdbt'


def resolve_checkpoint_path(path: str | Path) -> Path:
  """The checkpoint file/folder for `path`: itself, or the latest `checkpoint_N` / `N` inside it."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"T5X checkpoint '{path}' does not exist")
  if path.is_file() or _is_step_folder(path):
    return path
  steps = sorted((int(m.group(1)), child) for child in path.iterdir()
                 if (m := _STEP_DIR.match(child.name)) and _is_step_folder(child))
  if not steps:
    raise FileNotFoundError(
        f"'{path}' is not a T5X checkpoint: no '{INDEX_FILE}' file (or Orbax "
        f"{' / '.join(OCDBT_FILES)}) in it and no checkpoint_N/ or N/ step folder with one; pass "
        f"the legacy checkpoint file or a step folder")
  return steps[-1][1]


def _is_step_folder(path: Path) -> bool:
  return (path / INDEX_FILE).is_file() or _is_ocdbt(path)


def _is_ocdbt(path: Path) -> bool:
  """An Orbax step folder whose arrays live in OCDBT (no per-array zarr folders to read)."""
  return path.is_dir() and ((path / OCDBT_FILES[0]).is_file() or
                            ((path / OCDBT_FILES[1]).is_file() and not (path / INDEX_FILE).is_file()))


def detect_layout(path: str | Path) -> str | None:
  """'legacy', 'tensorstore' or 'orbax' for a T5X checkpoint path, None when it is not one."""
  try:
    path = resolve_checkpoint_path(path)
  except FileNotFoundError:
    return None
  if _is_ocdbt(path):
    return "orbax_ocdbt"
  index_path = path if path.is_file() else path / INDEX_FILE
  try:
    index = serialization.msgpack_restore(index_path.read_bytes())
  except Exception:  # pylint: disable=broad-except
    return None  # Not msgpack: not a T5X checkpoint (e.g. a TF checkpoint text file).
  if not isinstance(index, dict):
    return None
  if "_optimizer" in index:
    return "orbax"
  optimizer = index.get("optimizer")
  if not isinstance(optimizer, dict):
    return None
  return "tensorstore" if _any_leaf(optimizer, _is_tensorstore_spec) else "legacy"


def read_checkpoint(path: str | Path,
                    shapes: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
                    *, with_optimizer_state: bool = True) -> T5XCheckpoint:
  """Reads any of the three T5X layouts into numpy arrays.

  Args:
    path: the legacy file, a step folder, or a model dir holding `checkpoint_N/` step folders.
    shapes: `{"target/encoder/...": (shape, dtype)}` for arrays whose folder lacks `.zarray`
      metadata (only needed for such Orbax checkpoints; paths are relative to the optimizer).
    with_optimizer_state: also read the Adafactor `param_states` (else an empty dict).
  """
  path = resolve_checkpoint_path(path)
  layout = detect_layout(path)
  if layout is None:
    raise ValueError(f"'{path}' is not a T5X checkpoint (expected a flax msgpack file or a folder "
                     f"with a msgpack '{INDEX_FILE}' index)")
  if layout == "orbax_ocdbt":
    tree = _read_ocdbt(path)
  else:
    index_path = path if path.is_file() else path / INDEX_FILE
    tree = serialization.msgpack_restore(index_path.read_bytes())
  tree = tree["optimizer" if "optimizer" in tree else "_optimizer"]
  if not with_optimizer_state:
    tree = {"target": tree.get("target", {}), "state": {"step": tree.get("state", {}).get("step", 0)}}
  if layout in ("tensorstore", "orbax"):
    tree = _load_leaves(tree, path, shapes or {}, prefix="")
  state = tree.get("state", {})
  return T5XCheckpoint(params=tree.get("target") or {}, param_states=state.get("param_states") or {},
                       step=int(np.asarray(state.get("step", 0))), layout=layout)


def unscan(flat: Mapping[str, Any], param_scan_axis: int = T5X_PARAM_SCAN_AXIS) -> dict[str, Any]:
  """Scanned T5X params (`encoder/layers/x`, layer axis `param_scan_axis`) → `encoder/layers_N/x`.

  Unscanned checkpoints come back unchanged. All stacked params of a stack must agree on the
  number of layers along the axis, which catches a wrong `param_scan_axis` with one clear line.
  """
  counts: dict[str, dict[int, str]] = {}
  for name, value in flat.items():
    if params_lib.is_stacked(name):
      stack = name.split("/layers/")[0]
      size = np.shape(value)[param_scan_axis] if np.ndim(value) > param_scan_axis else 0
      counts.setdefault(stack, {}).setdefault(size, name)
  for stack, sizes in counts.items():
    if len(sizes) > 1:
      found = ", ".join(f"{name}: {size}" for size, name in sorted(sizes.items()))
      raise params_lib.ParamMismatchError(
          f"scanned T5X params under '{stack}' disagree on the number of layers along axis "
          f"{param_scan_axis} ({found}); pass --t5x_param_scan_axis with the axis the layers are "
          f"stacked on (T5X's param_scan_axis, default {T5X_PARAM_SCAN_AXIS})")
  return params_lib.unstack_layers(flat, axis=param_scan_axis)


def to_t5x_layout(flat: Mapping[str, Any], scanned: bool = False,
                  param_scan_axis: int = T5X_PARAM_SCAN_AXIS) -> dict[str, np.ndarray]:
  """flan_jax params (either layout) → T5X's: unscanned `layers_N` with T5X's 2-D attention kernels
  (`[embed, heads*kv]`, `[heads*kv, embed]`), or stacked on `param_scan_axis` when `scanned`."""
  out = {}
  for name, value in params_lib.unstack_layers(flat).items():
    if value.ndim == 3 and "attention/" in name:
      out_kernel = name.endswith("out/kernel")
      value = value.reshape(-1, value.shape[-1]) if out_kernel else value.reshape(value.shape[0], -1)
    out[name] = value
  return params_lib.stack_layers(out, axis=param_scan_axis) if scanned else out


def write_legacy(folder: str | Path, params: Mapping[str, Any], step: int,
                 param_states: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
  """Writes `folder/checkpoint_<step>/checkpoint`: T5X's legacy msgpack layout (arrays inline).

  `param_states` ({param name: {v_row, v_col, v, m}}) may be left out: T5X then restores the
  model with its optimizer state skipped (e.g. RestoreCheckpointConfig.assignment_map =
  ((r'state/param_states.*', None),)).
  """
  path = Path(folder) / f"checkpoint_{step}" / INDEX_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  states = params_lib.unflatten({f"{name}/{field}": value for name, fields in (param_states or {}).items()
                                 for field, value in fields.items()})
  tree = {"version": 3, "optimizer": {"target": params_lib.unflatten(dict(params)),
                                      "state": {"step": np.int32(step), "param_states": states}}}
  path.write_bytes(serialization.msgpack_serialize(tree))
  return path.parent


def _read_ocdbt(path: Path) -> dict[str, Any]:
  """The whole tree of an Orbax OCDBT step folder, arrays as numpy (no device placement)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  if metadata is None:
    raise ValueError(f"'{path}' looks like an Orbax checkpoint but Orbax finds no tree metadata in "
                     f"it ({OCDBT_FILES[1]}); is the step folder complete?")
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree)
  tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  if not isinstance(tree, dict) or not ({"optimizer", "_optimizer"} & set(tree)):
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(f"Orbax checkpoint '{path}' is not a T5X checkpoint: expected a top-level "
                     f"'_optimizer' (or 'optimizer') entry, found {keys}")
  return tree


def _load_leaves(tree: Any, root: Path, shapes: Mapping[str, Any], prefix: str) -> Any:
  if isinstance(tree, dict) and not _is_tensorstore_spec(tree):
    return {k: _load_leaves(v, root, shapes, f"{prefix}{k}/") for k, v in tree.items()}
  name = prefix.rstrip("/")
  if _is_tensorstore_spec(tree):
    meta = tree.get("metadata", {})
    folder = root / tree["kvstore"]["path"].rstrip("/")
    return _read_folder(folder, name, shapes, meta.get("shape"), tree.get("dtype"),
                        meta.get("chunks"), meta.get("compressor"))
  if isinstance(tree, str) and tree.startswith(_PLACEHOLDER):
    return _read_folder(root / tree[len(_PLACEHOLDER):], name, shapes, None, None, None, None)
  return tree


def _read_folder(folder: Path, name: str, shapes: Mapping[str, Any], shape, dtype, chunks,
                 compressor) -> np.ndarray:
  if not folder.is_dir():
    raise FileNotFoundError(f"T5X checkpoint array '{name}' should be in {folder}, which is missing")
  if shape is None and not (folder / ".zarray").exists():
    if name not in shapes:
      raise ValueError(f"T5X array '{name}' ({folder}) has no .zarray metadata; pass its shape and "
                       f"dtype in `shapes` (e.g. shapes={{'{name}': ((8, 16), 'float32')}})")
    shape, dtype = shapes[name]
  return zarr.read_array(folder, shape=shape, dtype=dtype, chunks=chunks, compressor=compressor)


def _is_tensorstore_spec(node: Any) -> bool:
  return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _any_leaf(tree: Any, predicate) -> bool:
  if predicate(tree):
    return True
  return isinstance(tree, dict) and any(_any_leaf(v, predicate) for v in tree.values())
