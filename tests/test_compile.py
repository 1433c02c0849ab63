"""flan_jax.compile / roofline: slice names, collective accounting, the real train step compiled
for the 8-device CPU mesh (memory, extrapolated costs, roofline) and, with libtpu, for a TPU slice."""
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flan_jax import compile as compile_lib, optim, partitioning, roofline
from test_trainer import ToyModel


@pytest.mark.parametrize("name, libtpu_name, chips, hbm_gib", [
    ("v4-64", "v4:2x4x4", 32, 32), ("v4-256", "v4:4x4x8", 128, 32), ("v4-8", "v4:2x2x1", 4, 32),
    ("v4-32", "v4:2x2x4", 16, 32), ("v5p-128", "v5p:4x4x4", 64, 95e9 / 2 ** 30), ("v5litepod-16", "v5e:4x4", 16, 16e9 / 2 ** 30),
    ("v6e-8", "v6e:2x4", 8, 32e9 / 2 ** 30), ("v4:4x4x2", "v4:4x4x2", 32, 32)])
def test_slice_names_count_tensorcores_for_v4_v5p_and_chips_for_v5e_v6e(name, libtpu_name, chips, hbm_gib):
  topo = roofline.parse_topology(name)
  assert (topo.libtpu_name, topo.num_chips) == (libtpu_name, chips)
  assert topo.chip.hbm_bytes / 2 ** 30 == pytest.approx(hbm_gib)


@pytest.mark.parametrize("name, message", [
    ("v4-63", "power-of-two number of chips"), ("v9-8", "unknown TPU generation"),
    ("tpu64", "not understood")])
def test_bad_slice_names_say_how_to_write_one(name, message):
  with pytest.raises(ValueError, match=message):
    roofline.parse_topology(name)


def test_roofline_takes_the_slowest_resource():
  chip = roofline.CHIPS["v4"]
  line = roofline.roofline(chip, flops=275e12, hbm_bytes_moved=600e9, comm_bytes=30e9)
  assert (line.compute_s, line.memory_s, line.comm_s) == pytest.approx((1.0, 0.5, 0.1))
  assert line.step_s == pytest.approx(1.0) and line.bound == "compute"


def test_collective_bytes_reads_the_compiled_hlo():
  mesh = Mesh(np.asarray(jax.devices()), ("d",), axis_types=(AxisType.Auto,))
  x = jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("d")))
  replicated = NamedSharding(mesh, PartitionSpec())
  total = jax.jit(lambda v: v.sum(0), out_shardings=replicated).lower(x).compile()
  gather = jax.jit(lambda v: v * 2, out_shardings=replicated).lower(x).compile()
  assert roofline.collective_bytes(total.as_text()) == 2 * 1024 * 4  # all-reduce counts twice
  assert roofline.collective_bytes(gather.as_text()) == 8 * 1024 * 4


class _ConverterToy(ToyModel):
  import seqio  # pylint: disable=import-outside-toplevel
  feature_converter_cls = seqio.DecoderFeatureConverter


@pytest.fixture(scope="module")
def cpu_report():
  setup = compile_lib.TrainSetup(_ConverterToy(), optim.adafactor(), 16, {"targets": 8})
  return compile_lib.analyze(setup, "cpu", {"data": 2, "fsdp": 4, "model": 1})


def test_cpu_report_memory_and_estimates(cpu_report):
  r = cpu_report
  assert r["num_devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 4, "model": 1}
  assert r["per_chip_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                 + r["temp_bytes"] + r["code_bytes"])
  assert r["alias_bytes"] > 0  # the train state is donated
  assert r["fits"] and 0 < r["per_chip_bytes"] < r["hbm_bytes"]
  assert r["model_flops_per_chip"] > 0 and r["estimated_step_s"] > 0
  assert 0 < r["estimated_mfu"] <= 1
