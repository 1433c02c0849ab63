r"""Compile the real train step ahead of time for a TPU slice (or this CPU) and estimate fit and speed.

  python -m flan_jax.compile --gin_file=models/flan_t5_xxl.gin --gin_file=runs/finetune.gin \
      --topology=v4-64 [--mesh=1,-1,1] [--json]

The run and model gins are read exactly as `flan_jax.train` reads them (model, optimizer, batch
size, feature lengths, microbatches, mesh shape); the step compiled is `trainer.Trainer`'s, with
the shipped logical-axis rules. TPU topologies compile through libtpu on this machine
(`pip install -e .[tpu]`); `--topology=cpu` compiles for this host's devices instead.

What is measured and what is estimated:
  * per-chip memory (arguments, temporaries, outputs, minus donated buffers) comes from XLA's
    memory analysis of the full compiled step: a compiler figure, not an estimate;
  * FLOPs, HBM bytes and collective bytes come from XLA's cost analysis, which counts a scanned
    layer once, so they are taken from small unscanned compiles (1 and 2 layers of each stack)
    and extrapolated linearly to the real depth: estimates;
  * model FLOPs (for MFU) are analytic: 6 × matmul parameters × tokens, plus attention scores;
  * step time is a roofline from those counts and the chip's published peaks: an estimate, and a
    lower bound (perfect overlap of compute, HBM and interconnect).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from absl import app, flags

from flan_jax import gin_utils, partitioning, roofline
from flan_jax.trainer import Trainer, estimate_flops_per_example

flags.DEFINE_string("topology", "cpu", "TPU slice (v4-64, v5p-128, v5e-16, v6e-8, v4:2x4x4) or 'cpu'.")
flags.DEFINE_string("mesh", "", "data,fsdp,model sizes (one may be -1); default: the gin's create_mesh.")
flags.DEFINE_bool("json", False, "End the output with one JSON object.")
flags.DEFINE_float("cpu_peak_flops", 950e9, "This host's bf16 matmul peak (FLOP/s) for --topology=cpu.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What `flan_jax.train.train` would build, minus the data."""
  model: Any
  optimizer: Any
  batch_size: int
  task_feature_lengths: dict[str, int]
  num_microbatches: int = 1
  loss_normalization: str = "tokens"
  pack: bool = True


def _train_binding(name: str, default: Any = None) -> Any:
  """`train.<name>` as bound by the parsed gin files, references (macros, @fn()) evaluated."""
  from gin import config as gin_config  # pylint: disable=import-outside-toplevel
  try:
    value = gin.query_parameter(f"train.{name}")
  except ValueError:
    return default
  def resolve(v):
    if isinstance(v, gin_config.ConfigurableReference):
      return resolve(v.scoped_configurable_fn() if v.evaluate else v.scoped_configurable_fn)
    if isinstance(v, dict):
      return {k: resolve(x) for k, x in v.items()}
    return v
  return resolve(value)


def setup_from_gin() -> TrainSetup:
  """Reads the `train` bindings that matter for one step (MODEL_DIR, TRAIN_STEPS are not needed)."""
  values = {k: _train_binding(k) for k in ("model", "batch_size", "task_feature_lengths")}
  missing = [k for k, v in values.items() if v is None]
  if missing:
    raise ValueError(f"the gin files bind no train.{', train.'.join(missing)}; pass a model gin "
                     f"and a run gin, e.g. --gin_file=models/flan_t5_xxl.gin --gin_file=runs/finetune.gin")
  optimizer = _train_binding("optimizer")
  if optimizer is None:
    from flan_jax.optim import adafactor  # pylint: disable=import-outside-toplevel
    optimizer = adafactor()
  return TrainSetup(values["model"], optimizer, int(values["batch_size"]),
                    dict(values["task_feature_lengths"]), int(_train_binding("num_microbatches", 1)),
                    _train_binding("loss_normalization", "tokens"), bool(_train_binding("pack", True)))


def input_specs(model: Any, task_feature_lengths: Mapping[str, int], batch_size: int,
                pack: bool = True) -> dict[str, tuple[int, ...]]:
  """The model features the feature converter produces (all int32), as `[batch, length]` shapes."""
  converter = model.feature_converter_cls(pack=pack)
  lengths = converter.get_model_feature_lengths(dict(task_feature_lengths))
  return {k: (batch_size, int(v)) for k, v in lengths.items()}


def compile_step(setup: TrainSetup, mesh: jax.sharding.Mesh, model: Any | None = None
                 ) -> tuple[Any, Trainer]:
  """Lowers and compiles `Trainer.train_step` for abstract inputs on `mesh`; returns (compiled, trainer)."""
  model = setup.model if model is None else model
  shapes = input_specs(model, setup.task_feature_lengths, setup.batch_size, setup.pack)
  types = {k: np.int32 for k in shapes}
  trainer = Trainer(model, setup.optimizer, mesh, shapes, types,
                    num_microbatches=setup.num_microbatches,
                    loss_normalization=setup.loss_normalization)
  batch = {k: jax.ShapeDtypeStruct(s, np.int32, sharding=trainer.batch_shardings[k])
           for k, s in shapes.items()}
  with jax.set_mesh(mesh):
    compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
  return compiled, trainer


def _progress(message: str) -> None:
  """Progress on stderr: big compiles take minutes on a busy CPU."""
  sys.stderr.write(f"[compile {time.strftime('%H:%M:%S')}] {message}\n")
  sys.stderr.flush()


def _layer_fields(config: Any) -> list[str]:
  if not dataclasses.is_dataclass(config):
    return []
  return [f.name for f in dataclasses.fields(config)
          if "layers" in f.name and isinstance(getattr(config, f.name), int)
          and not isinstance(getattr(config, f.name), bool)]


def step_costs(compiled: Any) -> np.ndarray:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return np.array([float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0)),
                   roofline.collective_bytes(compiled.as_text())])


def extrapolated_costs(setup: TrainSetup, mesh: jax.sharding.Mesh,
                       rebuild: Callable[[Any], Any] | None = None) -> tuple[np.ndarray, int]:
  """Per-device [FLOPs, HBM bytes, collective bytes] of one step, and the number of compiles.

  XLA counts a loop body once, so the step is compiled unscanned with 1 layer per stack, then
  with 2 layers in one stack at a time; cost(L) = cost(1) + Σ (L_i - 1) · (cost(2_i) - cost(1)).
  """
  config = getattr(setup.model, "config", None)
  fields = _layer_fields(config)
  if not fields:
    compiled, _ = compile_step(setup, mesh)
    return step_costs(compiled), 1
  if rebuild is None:
    from flan_jax import models  # pylint: disable=import-outside-toplevel
    rebuild = lambda c: models.build_model_from_config(c, setup.model.vocabulary)
  unscanned = {"scan_layers": False} if hasattr(config, "scan_layers") else {}
  ones = {f: 1 for f in fields}
  _progress(f"cost compiles: unscanned with 1 layer per stack, then 2 in each of {fields}")
  base = step_costs(compile_step(setup, mesh, rebuild(dataclasses.replace(config, **unscanned, **ones)))[0])
  total = base.copy()
  for field in fields:
    _progress(f"cost compile: 2 layers in {field}")
    two = step_costs(compile_step(setup, mesh, rebuild(
        dataclasses.replace(config, **unscanned, **{**ones, field: 2})))[0])
    total += (getattr(config, field) - 1) * (two - base)
  return total, 1 + len(fields)


def attention_flops_per_example(config: Any, task_feature_lengths: Mapping[str, int]) -> float:
  """Training FLOPs (3 × forward) of the attention score and value products for one example."""
  heads = getattr(config, "num_heads", 0)
  head_dim = getattr(config, "head_dim", 0) or (getattr(config, "d_model", getattr(config, "emb_dim", 0))
                                                // max(heads, 1))
  per_pair = 3 * 2 * 2 * heads * head_dim  # (QK^T and AV) × multiply-add × (fwd + 2 bwd)
  inputs, targets = task_feature_lengths.get("inputs", 0), task_feature_lengths.get("targets", 0)
  if hasattr(config, "num_encoder_layers"):
    return per_pair * (config.num_encoder_layers * inputs * inputs
                       + config.num_decoder_layers * (targets * targets + targets * inputs))
  length = inputs + targets
  return per_pair * getattr(config, "num_layers", 0) * length * length


def _memory(compiled: Any) -> dict[str, int]:
  stats = compiled.memory_analysis()
  out = {"argument_bytes": int(stats.argument_size_in_bytes),
         "output_bytes": int(stats.output_size_in_bytes),
         "alias_bytes": int(stats.alias_size_in_bytes),
         "temp_bytes": int(stats.temp_size_in_bytes),
         "code_bytes": int(getattr(stats, "generated_code_size_in_bytes", 0))}
  out["per_chip_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                           + out["temp_bytes"] + out["code_bytes"])
  return out


def _parse_mesh(text: str) -> dict[str, int]:
  try:
    sizes = [int(s) for s in text.split(",")]
  except ValueError:
    sizes = []
  if len(sizes) != 3:
    raise ValueError(f"--mesh={text} must be three integers data,fsdp,model (one may be -1), e.g. 1,-1,1")
  return dict(zip(partitioning.MESH_AXES, sizes))


def analyze(setup: TrainSetup, topology: str = "cpu", mesh_shape: Mapping[str, int] | None = None,
            cpu_peak_flops: float = 950e9,
            rebuild: Callable[[Any], Any] | None = None) -> dict[str, Any]:
  """Compiles the step for `topology` and returns the report (see the module docstring)."""
  if topology == "cpu":
    devices = jax.devices()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    chip, name, num_chips = roofline.cpu_spec(len(devices), cpu_peak_flops, memory), "cpu", len(devices)
  else:
    topo = roofline.parse_topology(topology)
    devices, chip, name, num_chips = roofline.tpu_devices(topo), topo.chip, topo.libtpu_name, topo.num_chips
  mesh = partitioning.create_mesh(devices=devices, **dict(mesh_shape or {}))
  start = time.time()
  _progress(f"compiling the train step for {name} ({len(devices)} devices, mesh {dict(mesh.shape)})")
  compiled, trainer = compile_step(setup, mesh)
  compile_s = time.time() - start
  memory = _memory(compiled)
  own_count = step_costs(compiled)  # what XLA reports for the real step (scans counted once)
  (xla_flops, hbm_moved, comm), num_compiles = extrapolated_costs(setup, mesh, rebuild)
  config = getattr(setup.model, "config", None)
  tokens = setup.batch_size * sum(setup.task_feature_lengths.values())
  model_flops = setup.batch_size * (
      estimate_flops_per_example(trainer.abstract_params, setup.task_feature_lengths)
      + attention_flops_per_example(config, setup.task_feature_lengths))
  model_flops_per_chip = model_flops / len(devices)
  # XLA's count can come out below the analytic one (it is per-device after partitioning and
  # approximate); the roofline takes the larger so it never flatters the step time.
  line = roofline.roofline(chip, max(xla_flops, model_flops_per_chip), hbm_moved, comm)
  return {
      "topology": topology, "libtpu_topology": name, "chip": chip.name, "num_chips": num_chips,
      "num_devices": len(devices), "mesh": dict(mesh.shape), "num_params": trainer.num_params,
      "batch_size": setup.batch_size, "task_feature_lengths": setup.task_feature_lengths,
      "tokens_per_step": tokens, "compile_s": round(compile_s, 2), "cost_compiles": num_compiles,
      **memory, "hbm_bytes": int(chip.hbm_bytes), "fits": memory["per_chip_bytes"] <= chip.hbm_bytes,
      "model_flops_per_chip": model_flops_per_chip, "xla_flops_per_chip": float(xla_flops),
      "xla_flops_per_chip_as_reported": float(own_count[0]),
      "hbm_bytes_moved_per_chip": float(hbm_moved), "collective_bytes_per_chip": float(comm),
      "peak_flops_per_chip": chip.peak_flops, "estimated_compute_s": line.compute_s,
      "estimated_memory_s": line.memory_s, "estimated_comm_s": line.comm_s,
      "estimated_step_s": line.step_s, "estimated_bound": line.bound,
      "estimated_mfu": model_flops_per_chip / (line.step_s * chip.peak_flops) if line.step_s else 0.0,
      "estimated_tokens_per_s": tokens / line.step_s if line.step_s else 0.0,
  }


def format_table(report: Mapping[str, Any]) -> str:
  """The human-readable table; estimates are marked `(est.)`."""
  gib = lambda b: f"{b / roofline.GIB:,.2f} GiB"
  rows = [
      ("slice", f"{report['topology']} ({report['libtpu_topology']}, {report['num_devices']} devices, "
                f"{report['chip']})"),
      ("mesh", ", ".join(f"{k}={v}" for k, v in report["mesh"].items())),
      ("parameters", f"{report['num_params']:,}"),
      ("batch", f"{report['batch_size']} × {report['task_feature_lengths']}"),
      ("compile (full step)", f"{report['compile_s']:.1f} s"),
      ("memory / chip: arguments", gib(report["argument_bytes"])),
      ("memory / chip: temporaries", gib(report["temp_bytes"])),
      ("memory / chip: outputs - donated", gib(report["output_bytes"] - report["alias_bytes"])),
      ("memory / chip: total", f"{gib(report['per_chip_bytes'])} of {gib(report['hbm_bytes'])} "
                               f"→ {'FITS' if report['fits'] else 'DOES NOT FIT'}"),
      ("model FLOPs / chip (analytic)", f"{report['model_flops_per_chip']:.3e}"),
      ("XLA FLOPs / chip incl. remat (est.)", f"{report['xla_flops_per_chip']:.3e}"),
      ("HBM bytes moved / chip (est.)", gib(report["hbm_bytes_moved_per_chip"])),
      ("collective bytes / chip (est.)", gib(report["collective_bytes_per_chip"])),
      ("roofline compute / HBM / ICI (est.)", f"{report['estimated_compute_s']:.3f} / "
       f"{report['estimated_memory_s']:.3f} / {report['estimated_comm_s']:.3f} s"),
      ("step time (est., lower bound)", f"{report['estimated_step_s']:.3f} s, {report['estimated_bound']}-bound"),
      ("tokens/s (est.)", f"{report['estimated_tokens_per_s']:,.0f}"),
      ("MFU (est.)", f"{100 * report['estimated_mfu']:.1f}%"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def render(report: Mapping[str, Any], as_json: bool = False) -> str:
  """The table, followed (as_json) by the whole report as one JSON object on the last line."""
  return format_table(report) + (f"\n{json.dumps(report)}" if as_json else "")


def main() -> None:
  mesh_shape = _parse_mesh(FLAGS.mesh) if FLAGS.mesh else None
  report = analyze(setup_from_gin(), FLAGS.topology, mesh_shape, FLAGS.cpu_peak_flops)
  print(render(report, FLAGS.json))


def run() -> None:
  """Like gin_utils.run, but gin is not finalized: MODEL_DIR / TRAIN_STEPS may stay unset here."""
  gin_utils.define_gin_flags()

  def _main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
      gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, finalize=False)
      main()
    except gin_utils.GinConfigError as e:
      raise SystemExit(f"error: {e}") from None
    except (ValueError, RuntimeError) as e:
      line = gin_utils.explain_missing_required(e) or str(e).splitlines()[0]
      raise SystemExit(f"error: {line}") from None

  def _parse(argv: Sequence[str]) -> list[str]:
    try:
      return FLAGS(gin_utils.rewrite_gin_args(argv))
    except (gin_utils.GinConfigError, flags.Error) as e:
      raise SystemExit(f"error: {e}") from None

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  app.run(_main, flags_parser=_parse)


if __name__ == "__main__":
  run()
