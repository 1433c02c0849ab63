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
  * collective and HBM bytes are read from the compiled step's HLO, every loop body (scanned
    layers, microbatches, the windowed matmuls of collective matmuls) multiplied by its trip
    count, since XLA's cost analysis counts a loop body once: estimates (`roofline.hlo_traffic`);
  * FLOPs are analytic: model FLOPs (for MFU) = 6 × matmul parameters × tokens plus attention
    products; FLOPs run add the forward pass that rematerialization repeats;
  * step time is a roofline from those counts and the chip's published peaks. TPUs run
    collectives asynchronously and XLA schedules FSDP all-gathers / reduce-scatters under the
    layers' matmuls, so the headline takes the slowest of compute, HBM and interconnect
    (perfect overlap, a lower bound on step time); the sum (no overlap) is printed beside it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
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
flags.DEFINE_integer("top_traffic", 0, "Also list the N instructions that move the most HBM bytes "
                     "per step (with the jax operation each came from): where to look for savings.")
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


# Share of a layer's forward pass that the backward pass recomputes, per remat policy: 'matmuls'
# for the projections, 'attention' for the score and value products (dots with batch dimensions).
_RECOMPUTED = {"none": (), "everything_saveable": (), "dots_saveable": (),
               "dots_with_no_batch_dims_saveable": ("attention",),
               "nothing_saveable": ("matmuls", "attention"), "full": ("matmuls", "attention")}


def _layers_only(tree: Any) -> dict[str, Any]:
  """The subtrees under `layers` / `layers_<i>` (what remat wraps), keeping their parents' keys."""
  out = {}
  for key, value in (tree.items() if isinstance(tree, Mapping) else ()):
    if str(key).startswith("layers"):
      out[key] = value
    elif sub := _layers_only(value):
      out[key] = sub
  return out


def executed_flops(model: Any, params: Any, task_feature_lengths: Mapping[str, int],
                   batch_size: int) -> tuple[float, float]:
  """(model FLOPs, FLOPs executed incl. rematerialization) of one step, analytic.

  Model FLOPs are 6 × matmul parameters × tokens plus the attention products (what MFU counts);
  a rematerialized layer runs its forward pass (a third of its training FLOPs) once more.
  """
  config = getattr(model, "config", None)
  matmuls = estimate_flops_per_example(params, task_feature_lengths)
  layer_matmuls = estimate_flops_per_example(_layers_only(params), task_feature_lengths)
  attention = attention_flops_per_example(config, task_feature_lengths)
  recomputed = _RECOMPUTED.get(getattr(config, "remat_policy", "none"), ())
  extra = (("matmuls" in recomputed) * layer_matmuls + ("attention" in recomputed) * attention) / 3
  return batch_size * (matmuls + attention), batch_size * (matmuls + attention + extra)


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


def _short_op_name(op_name: str) -> str:
  """'jit(_train_step)/transpose(jvp(Transformer))/.../while/body/closed_call/layers/mlp/wo/...'
  without the wrappers every name shares."""
  for noise in ("jit(_train_step)/", "while/body/", "closed_call/", "checkpoint/"):
    op_name = op_name.replace(noise, "")
  op_name = re.sub(r"cond/branch_\d+_fun/", "", op_name)  # jax.lax.platform_dependent's
  return op_name.replace("transpose(jvp(", "backward(").replace("jvp(", "forward(")


def analyze(setup: TrainSetup, topology: str = "cpu", mesh_shape: Mapping[str, int] | None = None,
            cpu_peak_flops: float = 950e9, top_traffic: int = 0) -> dict[str, Any]:
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
  hlo_text = compiled.as_text()
  traffic = roofline.hlo_traffic(hlo_text)
  config = getattr(setup.model, "config", None)
  tokens = setup.batch_size * sum(setup.task_feature_lengths.values())
  model_flops, flops = executed_flops(setup.model, trainer.abstract_params, setup.task_feature_lengths,
                                      setup.batch_size)
  model_flops_per_chip, flops_per_chip = model_flops / len(devices), flops / len(devices)
  line = roofline.roofline(chip, flops_per_chip, traffic.hbm_bytes, traffic.collective_bytes)
  mfu = lambda step_s: model_flops_per_chip / (step_s * chip.peak_flops) if step_s else 0.0
  return {
      "topology": topology, "libtpu_topology": name, "chip": chip.name, "num_chips": num_chips,
      "num_devices": len(devices), "mesh": dict(mesh.shape), "num_params": trainer.num_params,
      "batch_size": setup.batch_size, "task_feature_lengths": setup.task_feature_lengths,
      "num_microbatches": setup.num_microbatches,
      "remat_policy": getattr(config, "remat_policy", None), "scan_layers": getattr(config, "scan_layers", None),
      "tokens_per_step": tokens, "compile_s": round(compile_s, 2),
      **memory, "hbm_bytes": int(chip.hbm_bytes), "fits": memory["per_chip_bytes"] <= chip.hbm_bytes,
      "model_flops_per_chip": model_flops_per_chip, "executed_flops_per_chip": flops_per_chip,
      "hbm_bytes_moved_per_chip": traffic.hbm_bytes, "collective_bytes_per_chip": traffic.collective_bytes,
      "unknown_loop_trip_counts": traffic.unknown_trip_counts,
      "peak_flops_per_chip": chip.peak_flops, "estimated_compute_s": line.compute_s,
      "estimated_memory_s": line.memory_s, "estimated_comm_s": line.comm_s,
      "estimated_step_s": line.step_s, "estimated_bound": line.bound,
      "estimated_mfu": mfu(line.step_s),
      "estimated_step_s_no_overlap": line.serial_s, "estimated_mfu_no_overlap": mfu(line.serial_s),
      "estimated_tokens_per_s": tokens / line.step_s if line.step_s else 0.0,
      "top_traffic": [{"op_name": _short_op_name(i.op_name), "shape": i.shape.split("{")[0],
                       "hbm_bytes": i.hbm_bytes}
                      for i in roofline.top_traffic(hlo_text, top_traffic)] if top_traffic else [],
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
      ("FLOPs run / chip incl. remat (analytic)", f"{report['executed_flops_per_chip']:.3e}"),
      ("HBM bytes moved / chip (est., HLO)", gib(report["hbm_bytes_moved_per_chip"])),
      ("collective bytes / chip (est., HLO)", gib(report["collective_bytes_per_chip"])),
      ("roofline compute / HBM / ICI (est.)", f"{report['estimated_compute_s']:.3f} / "
       f"{report['estimated_memory_s']:.3f} / {report['estimated_comm_s']:.3f} s"),
      ("step time (est., overlapped)", f"{report['estimated_step_s']:.3f} s, {report['estimated_bound']}-bound"),
      ("step time (est., no overlap)", f"{report['estimated_step_s_no_overlap']:.3f} s"),
      ("tokens/s (est.)", f"{report['estimated_tokens_per_s']:,.0f}"),
      ("MFU (est., overlapped / none)", f"{100 * report['estimated_mfu']:.1f}% / "
                                        f"{100 * report['estimated_mfu_no_overlap']:.1f}%"),
  ]
  width = max(len(k) for k, _ in rows)
  lines = [f"{k:<{width}}  {v}" for k, v in rows]
  if report.get("top_traffic"):
    lines.append("largest HBM traffic / chip / step (est.):")
    lines += [f"  {gib(t['hbm_bytes']):>12}  {t['shape']:<32} {t['op_name']}" for t in report["top_traffic"]]
  return "\n".join(lines)


def render(report: Mapping[str, Any], as_json: bool = False) -> str:
  """The table, followed (as_json) by the whole report as one JSON object on the last line."""
  return format_table(report) + (f"\n{json.dumps(report)}" if as_json else "")


def main() -> None:
  mesh_shape = _parse_mesh(FLAGS.mesh) if FLAGS.mesh else None
  report = analyze(setup_from_gin(), FLAGS.topology, mesh_shape, FLAGS.cpu_peak_flops,
                   FLAGS.top_traffic)
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
