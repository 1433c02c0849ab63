"""flan_jax.compile / roofline: slice names, collective accounting, the real Flan-T5 (tiny) train step
read from the shipped gins and compiled for the 8-device CPU mesh (memory, extrapolated costs,
roofline), the CLI, and, where libtpu is installed, the same step compiled for a TPU slice."""
import importlib.util
import json
import os
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flan_jax import compile as compile_lib, gin_utils, roofline
from flan_jax.models.model import EncoderDecoderModel


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



RUN_BINDINGS = ["TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "BATCH_SIZE = 8"]


@pytest.fixture(scope="module")
def setup(t5_vocab_path):
  gin.clear_config()
  gin_utils.parse_gin(["models/flan_t5_tiny.gin", "runs/finetune.gin"], RUN_BINDINGS, finalize=False)
  try:
    yield compile_lib.setup_from_gin()
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def cpu_report(setup):
  return compile_lib.analyze(setup, "cpu", {"data": 2, "fsdp": 2, "model": 2})


def test_setup_is_what_the_run_gin_trains(setup):
  assert isinstance(setup.model, EncoderDecoderModel)
  assert setup.model.config.num_encoder_layers == 2 and setup.model.config.dropout_rate == 0.05
  assert (setup.batch_size, setup.task_feature_lengths, setup.pack) == (8, {"inputs": 32, "targets": 8}, True)
  assert compile_lib.input_specs(setup.model, setup.task_feature_lengths, 8) == {
      "encoder_input_tokens": (8, 32), "encoder_segment_ids": (8, 32), "encoder_positions": (8, 32),
      "decoder_input_tokens": (8, 8), "decoder_target_tokens": (8, 8), "decoder_loss_weights": (8, 8),
      "decoder_segment_ids": (8, 8), "decoder_positions": (8, 8)}


def test_cpu_report_memory_and_estimates(cpu_report):
  r = cpu_report
  assert r["num_devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
  assert r["cost_compiles"] == 3  # 1+1 layers, then 2 encoder, then 2 decoder layers
  assert r["per_chip_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                 + r["temp_bytes"] + r["code_bytes"])
  assert r["alias_bytes"] > 0  # the train state is donated
  # Arguments hold at least this device's share of the f32 parameters.
  assert r["argument_bytes"] >= 4 * r["num_params"] / 8
  assert r["fits"] and 0 < r["per_chip_bytes"] < r["hbm_bytes"]
  assert r["collective_bytes_per_chip"] > 0  # gradients are reduced over data × fsdp
  assert 0 < r["model_flops_per_chip"] <= r["xla_flops_per_chip"] * 1.5
  assert r["estimated_step_s"] > 0 and 0 < r["estimated_mfu"] <= 1
  assert "FITS" in compile_lib.format_table(r) and "MFU (est.)" in compile_lib.format_table(r)


def test_layer_extrapolation_matches_the_direct_count_of_an_unscanned_step(cpu_report, setup):
  """flan_t5_tiny is unscanned, so XLA's own count of the full step is exact there; cost(L)
  extrapolated from the 1- and 2-layer compiles must reproduce it."""
  assert not setup.model.config.scan_layers
  assert cpu_report["xla_flops_per_chip"] == pytest.approx(cpu_report["xla_flops_per_chip_as_reported"], rel=1e-3)


def test_render_ends_with_the_json_report(cpu_report):
  lines = compile_lib.render(cpu_report, as_json=True).splitlines()
  report = json.loads(lines[-1])
  assert {"per_chip_bytes", "hbm_bytes", "fits", "estimated_step_s", "estimated_mfu"} <= set(report)
  assert report == json.loads(json.dumps(cpu_report))
  assert any(l.startswith("memory / chip: total") for l in lines[:-1])


def test_cli_reads_the_gins_and_reports_a_bad_slice_in_one_line(t5_vocab_path, repo_root):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  bad = subprocess.run(
      [sys.executable, "-m", "flan_jax.compile", "--gin_file=models/flan_t5_tiny.gin",
       "--gin_file=runs/finetune.gin", "--topology=v4-63", "--json"],
      capture_output=True, text=True, env=env, cwd=repo_root, timeout=300, check=False)
  assert bad.returncode == 1 and bad.stdout == ""
  assert bad.stderr.strip().splitlines()[-1].startswith("error: topology 'v4-63'")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e .[tpu]); TPU topologies need it")
def test_compiles_the_same_step_for_a_tpu_slice(setup):
  report = compile_lib.analyze(setup, "v4-16", {"data": -1, "fsdp": 1, "model": 1})
  assert report["libtpu_topology"] == "v4:2x2x2" and report["num_devices"] == 8
  assert report["hbm_bytes"] == 32 * 2 ** 30 and report["fits"]
  assert report["chip"] == "TPU v4" and report["estimated_step_s"] > 0
