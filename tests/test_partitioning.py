"""Mesh construction, the logical-axis rules, host → global batches and the partitioning dump."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from flan_jax import partitioning


@pytest.mark.parametrize("kwargs,shape", [
    ({}, (8, 1, 1)), ({"model": 8}, (1, 1, 8)), ({"fsdp": 4}, (2, 4, 1)),
    ({"data": 2, "fsdp": 2, "model": 2}, (2, 2, 2)), ({"data": 1, "fsdp": -1}, (1, 8, 1))])
def test_create_mesh_shapes(kwargs, shape):
  mesh = partitioning.create_mesh(**kwargs)
  assert tuple(mesh.shape.values()) == shape and mesh.axis_names == ("data", "fsdp", "model")
  assert set(mesh.axis_types) == {AxisType.Auto}


def test_create_mesh_on_a_device_subset():
  mesh = partitioning.create_mesh(devices=jax.devices()[:2])
  assert mesh.devices.size == 2


@pytest.mark.parametrize("kwargs,message", [
    ({"model": 3}, "does not divide 8 devices"), ({"data": 2, "fsdp": 2, "model": 1}, "needs 4 devices"),
    ({"data": -1, "fsdp": -1}, "at most one axis")])
def test_create_mesh_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    partitioning.create_mesh(**kwargs)


def test_rules_for_each_parallelism_style():
  spec = lambda names, shape, mesh: partitioning.logical_to_mesh_spec(names, shape, mesh)
  dp, fsdp, tp, two_d = (partitioning.create_mesh(*s) for s in [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)])
  assert spec(("embed", "mlp"), (64, 256), dp) == P()
  assert spec(("embed", "mlp"), (64, 256), fsdp) == P("fsdp")
  assert spec(("embed", "mlp"), (64, 256), tp) == P(None, "model")
  assert spec(("embed", "mlp"), (64, 256), two_d) == P("fsdp", "model")
  assert spec(("batch", "length"), (16, 32), two_d) == P(("data", "fsdp"))
  assert spec(("vocab", "embed"), (100, 64), tp) == P()  # 100 % 8 != 0: replicated, not an error
  assert spec(("layers", "embed", "heads", "kv"), (4, 64, 8, 16), two_d) == P(None, "fsdp", "model")
  with pytest.raises(ValueError, match="logical axis 'nonsense' has no rule"):
    spec(("nonsense",), (8,), dp)


def test_host_to_global_batch():
  mesh = partitioning.create_mesh(2, 2, 2)
  local = {"tokens": np.arange(32, dtype=np.int32).reshape(8, 4)}
  out = partitioning.host_to_global(local, mesh)
  assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
  assert len(out["tokens"].addressable_shards) == 8
  assert out["tokens"].addressable_shards[0].data.shape == (2, 4)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), local["tokens"])


class _Layer(nn.Module):
  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")), (8, 16))
    b = self.param("bias", nn.initializers.zeros, (16,))
    return x @ w + b


def test_dump_lists_every_parameter(tmp_path):
  mesh = partitioning.create_mesh(1, 2, 4)
  boxed = jax.eval_shape(_Layer().init, jax.random.key(0), jnp.ones((2, 8)))["params"]
  shardings = partitioning.tree_shardings(boxed, mesh)
  path = partitioning.write_dump(tmp_path, boxed, shardings, mesh)
  dump = json.loads(path.read_text())
  records = {r["name"]: r for r in dump["params"]}
  assert dump["mesh"] == {"data": 1, "fsdp": 2, "model": 4} and dump["num_params"] == 8 * 16 + 16
  assert records["kernel"] == {"name": "kernel", "shape": [8, 16], "dtype": "float32",
                               "logical_axes": ["embed", "mlp"], "mesh_axes": ["fsdp", "model"]}
  assert records["bias"]["logical_axes"] is None and records["bias"]["mesh_axes"] == []
  assert "kernel" in (tmp_path / "partitioning.txt").read_text()


def test_a_batch_every_host_holds_becomes_one_global_batch():
  """Inference prompts: every process holds all rows; the global array is that batch, not copies."""
  mesh = partitioning.create_mesh(data=4, model=2)
  batch = {"tokens": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
  out = partitioning.same_on_every_host_to_global(batch, mesh)["tokens"]
  assert out.shape == (8, 3) and out.sharding.spec == P("data", None)
  np.testing.assert_array_equal(np.asarray(out), batch["tokens"])
