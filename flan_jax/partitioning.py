"""Device mesh, logical-axis rules and host-local → global arrays.

Layers name their axes logically (`batch`, `embed`, `mlp`, ...; see docs/ARCHITECTURE.md). One
table, `LOGICAL_AXIS_RULES`, maps those names to the three mesh axes `('data', 'fsdp', 'model')`.
The parallelism style is chosen by the mesh *shape*, not by the rules: a mesh axis of size 1
shards nothing, so

  data-parallel     data=N, fsdp=1, model=1   (params replicated, batch split)
  FSDP              data=1, fsdp=N, model=1   (batch and params' `embed` split over the same devices)
  tensor-parallel   data=1, fsdp=1, model=N   (`mlp`, `heads`, `vocab` split; between sublayers
                                              the residual stream's length: sequence parallelism)
  2-D               any mix, e.g. data=2, fsdp=2, model=2

all use the same table. A dimension whose size the mesh axes do not divide is replicated along
those axes (tiny test models, odd vocabularies) and the dump says so.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from etils import epath
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")

# logical axis -> mesh axes (a tuple shards one dimension over several mesh axes, in order).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    ("kv", None),
    ("length", None),
    ("residual_length", "model"),
    ("layers", None),
    ("relpos_buckets", None),
)


def initialize_distributed() -> None:
  """Joins the multi-process job, if there is one; call before anything touches devices.

  On Cloud TPU VMs (several hosts) jax finds the coordinator itself. Elsewhere set
  FLAN_JAX_COORDINATOR=host:port, FLAN_JAX_NUM_PROCESSES and FLAN_JAX_PROCESS_ID (used by the
  local two-process test over 127.0.0.1, with gloo collectives on CPU).
  """
  if jax.distributed.is_initialized():
    return
  coordinator = os.environ.get("FLAN_JAX_COORDINATOR")
  if coordinator:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=int(os.environ["FLAN_JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["FLAN_JAX_PROCESS_ID"]))
  elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "localhost").split(",")) > 1:
    jax.distributed.initialize()


@gin.configurable
def create_mesh(data: int = -1, fsdp: int = 1, model: int = 1,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'model') mesh with Auto axes over `devices` (default: all devices).

  One axis may be -1 (the default for `data`): it takes whatever the others leave, so
  `model=8` alone is the T5X `num_partitions=8` style. On several TPU slices the `data` axis
  spans the slices (DCN) and `fsdp`/`model` stay inside one slice (ICI).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, model]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape (data={data}, fsdp={fsdp}, model={model}): at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape (data={data}, fsdp={fsdp}, model={model}) does not divide "
                       f"{len(devices)} devices; choose sizes whose product divides {len(devices)}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape (data={shape[0]}, fsdp={shape[1]}, model={shape[2]}) needs "
                     f"{math.prod(shape)} devices but {len(devices)} are available; set one axis to -1")
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if num_slices > 1 and shape[0] % num_slices == 0:
    per_slice = [shape[0] // num_slices, shape[1], shape[2]]
    array = mesh_utils.create_hybrid_device_mesh(per_slice, [num_slices, 1, 1], devices)
  else:
    try:
      array = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, ValueError, NotImplementedError):
      array = np.asarray(devices).reshape(shape)
  return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axes_for(name: str | None, rules: Sequence[tuple[str, Any]]) -> tuple[str, ...]:
  if name is None:
    return ()
  for logical, mesh_axes in rules:
    if logical == name:
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  raise ValueError(f"logical axis '{name}' has no rule in the partitioning rules; known: "
                   f"{', '.join(r[0] for r in rules)}")


def logical_to_mesh_spec(logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                         rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> PartitionSpec:
  """PartitionSpec for an array of `shape` whose dimensions carry `logical` names.

  Mesh axes already used by an earlier dimension, or whose product does not divide the
  dimension, are dropped (that dimension is replicated over them).
  """
  if logical is None:
    return PartitionSpec()
  used: set[str] = set()
  spec = []
  for name, size in zip(logical, shape):
    axes = [a for a in _mesh_axes_for(name, rules) if a not in used and mesh.shape[a] > 1]
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes.pop()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while spec and spec[-1] is None:
    spec.pop()
  return PartitionSpec(*spec)


def tree_shardings(boxed_tree: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings (unboxed tree structure) for a boxed tree of arrays or ShapeDtypeStructs."""
  def one(x):
    if isinstance(x, nn.Partitioned):
      return NamedSharding(mesh, logical_to_mesh_spec(x.names, x.value.shape, mesh, rules))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh, ndim: int = 2,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> NamedSharding:
  """Sharding of a `[batch, ...]` input array (batch over the data-like axes, rest replicated)."""
  axes = tuple(a for a in _mesh_axes_for("batch", rules) if mesh.shape[a] > 1)
  first = None if not axes else axes[0] if len(axes) == 1 else axes
  return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> int:
  """The global batch size must be a multiple of this (product of the batch mesh axes)."""
  return math.prod(mesh.shape[a] for a in _mesh_axes_for("batch", rules))


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> dict[str, jax.Array]:
  """Host-local numpy batch (this process's rows) → global jax.Arrays sharded along `batch`.

  Every process passes its own slice; the global batch is their concatenation in process order.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    sharding = batch_sharding(mesh, value.ndim, rules)
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


def same_on_every_host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
                                 rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES
                                 ) -> dict[str, jax.Array]:
  """A numpy batch that every process holds whole (inference prompts) → global jax.Arrays sharded
  along `batch`; each process places only the rows its devices hold."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_callback(value.shape, batch_sharding(mesh, value.ndim, rules),
                                            lambda index, v=value: v[index])
  return out


def describe(boxed_tree: Any, shardings: Any) -> list[dict[str, Any]]:
  """One record per parameter: path, shape, dtype, logical axes and mesh PartitionSpec."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  leaves = jax.tree_util.tree_flatten_with_path(boxed_tree, is_leaf=is_box)[0]
  records = []
  for (path, leaf), sharding in zip(leaves, jax.tree.leaves(shardings)):
    value = leaf.value if is_box(leaf) else leaf
    records.append({
        "name": "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path),
        "shape": list(value.shape),
        "dtype": str(value.dtype),
        "logical_axes": list(leaf.names) if is_box(leaf) else None,
        "mesh_axes": [list(p) if isinstance(p, tuple) else p for p in sharding.spec],
    })
  return records


def write_dump(model_dir: str | Path, boxed_tree: Any, shardings: Any, mesh: Mesh) -> epath.Path:
  """Writes MODEL_DIR/partitioning.json and a readable partitioning.txt; returns the JSON path."""
  records = describe(boxed_tree, shardings)
  model_dir = epath.Path(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  mesh_shape = dict(mesh.shape)
  total = sum(math.prod(r["shape"]) for r in records)
  path = model_dir / "partitioning.json"
  path.write_text(json.dumps({"mesh": mesh_shape, "num_params": total, "params": records}, indent=1) + "\n")
  width = max((len(r["name"]) for r in records), default=10)
  lines = [f"mesh {mesh_shape}  parameters {total:,}"]
  for r in records:
    lines.append(f"{r['name']:<{width}}  {str(tuple(r['shape'])):<20} {r['dtype']:<9} "
                 f"logical={r['logical_axes']}  mesh={r['mesh_axes']}")
  (model_dir / "partitioning.txt").write_text("\n".join(lines) + "\n")
  return path
