"""flan_jax.compile / roofline: slice names, HLO traffic accounting (collectives, loops), the real
Flan-T5 (tiny) train step read from the shipped gins and compiled for the 8-device CPU mesh
(memory, estimates, roofline), the CLI, and, through libtpu in .venv/libtpu (`make libtpu`), the
README's compile commands for TPU pod slices with a tiny model swapped in."""
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from conftest import REPO_ROOT
from flan_jax import compile as compile_lib, gin_utils, models, roofline
from flan_jax.models.model import EncoderDecoderModel

LIBTPU_DIR = REPO_ROOT / ".venv" / "libtpu"


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


def test_roofline_takes_the_slowest_resource_and_the_sum_without_overlap():
  chip = roofline.CHIPS["v4"]
  line = roofline.roofline(chip, flops=275e12, hbm_bytes_moved=600e9, comm_bytes=30e9)
  assert (line.compute_s, line.memory_s, line.comm_s) == pytest.approx((1.0, 0.5, 0.1))
  assert line.step_s == pytest.approx(1.0) and line.bound == "compute"
  assert line.serial_s == pytest.approx(1.6)


def _sharded_input():
  mesh = Mesh(np.asarray(jax.devices()), ("d",), axis_types=(AxisType.Auto,))
  x = jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("d")))
  return x, NamedSharding(mesh, PartitionSpec())


def test_collective_bytes_reads_the_compiled_hlo():
  x, replicated = _sharded_input()
  total = jax.jit(lambda v: v.sum(0), out_shardings=replicated).lower(x).compile()
  gather = jax.jit(lambda v: v * 2, out_shardings=replicated).lower(x).compile()
  assert roofline.collective_bytes(total.as_text()) == 2 * 1024 * 4  # all-reduce counts twice
  assert roofline.collective_bytes(gather.as_text()) == 8 * 1024 * 4


def test_hlo_traffic_multiplies_loop_bodies_by_their_trip_count():
  """XLA's cost analysis counts a while body once; a scanned loop must cost what its unrolled
  twin costs (collectives exactly, HBM bytes about the same)."""
  x, replicated = _sharded_input()

  def step(unroll):
    def run(v):
      def body(c, _):  # the all-reduce depends on the carry, so it cannot leave the loop
        return c + jnp.sin(c * v).sum(0), None
      return jax.lax.scan(body, jnp.zeros(1024), None, length=6, unroll=unroll)[0]
    return run

  looped, unrolled = (roofline.hlo_traffic(
      jax.jit(step(u), out_shardings=replicated).lower(x).compile().as_text()) for u in (1, True))
  assert looped.unknown_trip_counts == 0
  assert looped.collective_bytes == unrolled.collective_bytes == 6 * 2 * 1024 * 4
  assert looped.hbm_bytes == pytest.approx(unrolled.hbm_bytes, rel=0.5)


# A TPU-style module: memory-space assignment prefetches %w into on-chip memory (S(3)) with an
# async copy, and slices %x into it; the fusion then reads both from there.
_MEMORY_SPACE_HLO = """\
HloModule prefetch

%fused (p0: f32[1024], p1: f32[256]) -> f32[1024] {
  %p0 = f32[1024]{0:T(1024)S(3)} parameter(0)
  %p1 = f32[256]{0:T(256)S(3)} parameter(1)
  ROOT %r = f32[1024]{0:T(1024)} negate(%p0)
}

ENTRY %main (w: f32[1024], x: f32[4096]) -> f32[1024] {
  %w = f32[1024]{0:T(1024)} parameter(0)
  %x = f32[4096]{0:T(1024)} parameter(1)
  %copy-start = (f32[1024]{0:T(1024)}, f32[1024]{0:T(1024)S(3)}, u32[]{:S(2)}) copy-start(%w)
  %copy-done = f32[1024]{0:T(1024)S(3)} copy-done(%copy-start)
  %slice-start = ((f32[4096]{0:T(1024)}), f32[256]{0:T(256)S(3)}, s32[]{:S(2)}) slice-start(%x), slice={[0:256]}
  %slice-done = f32[256]{0:T(256)S(3)} slice-done(%slice-start)
  ROOT %fusion = f32[1024]{0:T(1024)} fusion(%copy-done, %slice-done), kind=kLoop, calls=%fused
}
"""


def test_hlo_traffic_counts_buffers_outside_hbm_only_when_moved():
  """A prefetch reads HBM once; reading the prefetched copy on chip is not HBM traffic."""
  traffic = roofline.hlo_traffic(_MEMORY_SPACE_HLO)
  prefetch, slice_read, fusion_write = 1024 * 4, 256 * 4, 1024 * 4
  assert traffic.hbm_bytes == prefetch + slice_read + fusion_write
  assert traffic.collective_bytes == 0


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
  return compile_lib.analyze(setup, "cpu", {"data": 2, "fsdp": 2, "model": 2}, top_traffic=5)


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
  assert r["per_chip_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                 + r["temp_bytes"] + r["code_bytes"])
  assert r["alias_bytes"] > 0  # the train state is donated
  # Arguments hold at least this device's share of the f32 parameters.
  assert r["argument_bytes"] >= 4 * r["num_params"] / 8
  assert r["fits"] and 0 < r["per_chip_bytes"] < r["hbm_bytes"]
  assert r["collective_bytes_per_chip"] > 0  # gradients are reduced over data × fsdp
  assert r["hbm_bytes_moved_per_chip"] > r["argument_bytes"]  # the step reads its state at least once
  assert r["unknown_loop_trip_counts"] == 0
  assert r["executed_flops_per_chip"] == r["model_flops_per_chip"] > 0  # flan_t5_tiny: no remat
  assert r["estimated_step_s"] == max(r["estimated_compute_s"], r["estimated_memory_s"], r["estimated_comm_s"])
  assert r["estimated_step_s_no_overlap"] == pytest.approx(
      r["estimated_compute_s"] + r["estimated_memory_s"] + r["estimated_comm_s"])
  top = [t["hbm_bytes"] for t in r["top_traffic"]]
  assert len(top) == 5 and top == sorted(top, reverse=True)
  assert 0 < sum(top) <= r["hbm_bytes_moved_per_chip"]
  assert any("Transformer" in t["op_name"] for t in r["top_traffic"])
  assert "largest HBM traffic" in compile_lib.format_table(r)
  assert 0 < r["estimated_mfu_no_overlap"] <= r["estimated_mfu"] <= 1
  assert "FITS" in compile_lib.format_table(r) and "MFU (est." in compile_lib.format_table(r)


@pytest.mark.parametrize("policy, share", [("none", 0.0), ("dots_saveable", 0.0), ("full", 1 / 3)])
def test_remat_adds_the_recomputed_forward_pass(setup, policy, share):
  """FLOPs run = model FLOPs + a third of the layers' (matmuls and attention) under full remat."""
  lengths = setup.task_feature_lengths
  config = dataclasses.replace(setup.model.config, remat_policy=policy, scan_layers=True)
  model = models.build_model_from_config(config, setup.model.vocabulary)
  boxed = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.key(0), compile_lib.input_specs(model, lengths, 8)))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "names") else x, boxed,
                        is_leaf=lambda x: hasattr(x, "names"))
  model_flops, run = compile_lib.executed_flops(model, params, lengths, 8)
  layers = 8 * compile_lib.estimate_flops_per_example(compile_lib._layers_only(params), lengths)
  attention = 8 * compile_lib.attention_flops_per_example(config, lengths)
  assert 0 < layers < model_flops
  assert run == pytest.approx(model_flops + share * (layers + attention))


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


def _readme_compile_commands() -> list[tuple[dict[str, str], list[str]]]:
  """The `python -m flan_jax.compile` commands of the README's TPU section: (env, argv)."""
  text = (REPO_ROOT / "README.md").read_text()
  section = text.split("## TPU VMs and pod slices", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if "-m flan_jax.compile" in c]
  out = []
  for command in commands:
    words = shlex.split(command.split("#")[0])
    env = dict(w.split("=", 1) for w in words[:words.index("python")])
    out.append((env, words[words.index("python"):]))
  return out


def _require_libtpu() -> None:
  if not (LIBTPU_DIR / "libtpu").is_dir():
    message = f"libtpu is not installed in {LIBTPU_DIR}; run `make libtpu`"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)


# The README's models with the smallest config of the same family, at short lengths: the command
# (gins, slice, mesh, --json) is the user's; only the model size changes, so the test stays fast.
TINY = {"flan_t5_xxl.gin": "flan_t5_tiny", "palm_62b.gin": "decoder_tiny"}


@pytest.mark.parametrize("index", [0, 1])
def test_readme_compile_commands_run_for_their_pod_slice(t5_vocab_path, index):
  _require_libtpu()
  commands = _readme_compile_commands()
  assert len(commands) == 2 and all(c[:3] == ["python", "-m", "flan_jax.compile"] for _, c in commands)
  readme_env, argv = commands[index]
  assert readme_env == {"PYTHONPATH": ".venv/libtpu"}  # where `make libtpu` puts it
  model_gin = next(a.rsplit("/", 1)[1] for a in argv if a.startswith("--gin_file=models/"))
  argv = [sys.executable] + argv[1:] + [
      f"--gin.configs.model_config.name='{TINY[model_gin]}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}"]
  env = {**os.environ, **readme_env}
  env.pop("JAX_PLATFORMS", None)
  done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  topology = next(a.split("=", 1)[1] for a in argv if a.startswith("--topology="))
  assert report["topology"] == topology and report["chip"] == "TPU v4"
  assert report["num_devices"] == roofline.parse_topology(topology).num_chips
  assert report["fits"] and 0 < report["per_chip_bytes"] < report["hbm_bytes"] == 32 * 2 ** 30
  assert report["scan_layers"] and report["remat_policy"] != "none"  # the pod gins' layout
  assert report["collective_bytes_per_chip"] > 0 and report["unknown_loop_trip_counts"] == 0
  assert 0 < report["estimated_mfu"] <= 1 and report["estimated_step_s"] > 0
