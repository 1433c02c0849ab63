r"""Train-step speed of a Flan-T5-small-shaped model on this CPU: flan_jax vs Hugging Face PyTorch.

  .venv/bin/python bench/train_step.py [--steps=2] [--batch=8] [--inputs=512] [--targets=128] [--rounds=1]

Same shapes on both sides (T5 v1.1 small: 8+8 layers, d_model 512, d_ff 1,024, 6 heads, vocab
32,128, untied logits), Adafactor, dropout 0.05, random tokens, no padding. flan_jax runs the
real `trainer.Trainer` step (bf16 activations, f32 params, donated state); PyTorch runs
`T5ForConditionalGeneration` under bf16 autocast. Each side runs in its own process.
MFU = analytic model FLOPs per second / the bf16 × bf16 → f32 matmul peak measured in the same
JAX process, the better of a measurement just before compiling the step and one just after timing
it (so a busy machine lowers both alike, and a load spike during one peak measurement does not
inflate the MFU).
The last line is JSON: tokens/s of both, `vs_torch`, `mfu`, `compile_s` (XLA compile of the step),
`first_step_s` (time to first step, compile included), `peak_mem_bytes` (peak RSS of the flan_jax
process), `xla_step_bytes` (arguments + temporaries of the compiled step) and the load average.
With `--rounds=N` both sides run N times in turn; the figures are those of each side's median
round, and `vs_torch_rounds` lists every round's ratio.
"""
from __future__ import annotations

import argparse
import math
import os

import common

DROPOUT = 0.05


def _args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=["jax", "torch"], help="run one side (used internally)")
  parser.add_argument("--steps", type=int, default=2,
                      help="steps per timed repetition (the median of 3 is reported)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=128)
  common.add_hugepages_flag(parser)
  common.add_rounds_flag(parser)
  return parser.parse_args(argv)


def _random_batch(args, vocab_size: int, seed: int = 0):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab_size - 200, (args.batch, args.inputs), dtype=np.int32)
  targets = rng.integers(2, vocab_size - 200, (args.batch, args.targets), dtype=np.int32)
  decoder_inputs = np.concatenate([np.zeros((args.batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_input_tokens": decoder_inputs,
          "decoder_loss_weights": np.ones_like(targets)}


def run_jax(args) -> dict:
  import dataclasses  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from flan_jax import compile as compile_lib, optim, partitioning  # pylint: disable=import-outside-toplevel
  from flan_jax.data import vocab  # pylint: disable=import-outside-toplevel
  from flan_jax.models import build_model_from_config, configs  # pylint: disable=import-outside-toplevel
  from flan_jax.trainer import Trainer, estimate_flops_per_example  # pylint: disable=import-outside-toplevel

  peak = common.jax_bf16_matmul_peak()
  config = dataclasses.replace(configs.CONFIGS["flan_t5_small"], dropout_rate=DROPOUT)
  model = build_model_from_config(config, vocab.t5_vocabulary())
  batch = _random_batch(args, config.vocab_size)
  shapes = {k: v.shape for k, v in batch.items()}
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  trainer = Trainer(model, optim.adafactor(), mesh, shapes, {k: v.dtype for k, v in batch.items()})
  state = trainer.init_state()
  global_batch = trainer.global_batch(batch)
  start = time.perf_counter()
  step = trainer.train_step.lower(state, global_batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = step(state, global_batch)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - start
  memory = step.memory_analysis()

  def steps():
    nonlocal state, metrics
    for _ in range(args.steps):
      state, metrics = step(state, global_batch)
    jax.block_until_ready(metrics)

  step_s = common.median(common.timed(steps, 3)) / args.steps
  peak = max(peak, common.jax_bf16_matmul_peak())
  lengths = {"inputs": args.inputs, "targets": args.targets}
  flops = args.batch * (estimate_flops_per_example(trainer.abstract_params, lengths)
                        + compile_lib.attention_flops_per_example(config, lengths))
  tokens = args.batch * (args.inputs + args.targets)
  return {"step_s": step_s, "tokens_per_s": tokens / step_s, "first_step_s": first_step_s,
          "compile_s": compile_s, "flops_per_step": flops, "bf16_peak_flops": peak,
          "mfu": flops / step_s / peak, "loss": float(metrics["loss"]),
          "num_params": trainer.num_params, "peak_rss_bytes": common.peak_rss_bytes(),
          "xla_step_bytes": int(memory.argument_size_in_bytes + memory.temp_size_in_bytes)}


def run_torch(args) -> dict:
  import time  # pylint: disable=import-outside-toplevel

  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = common.hf_t5_v1_1_small(dropout_rate=DROPOUT)
  model.train()
  optimizer = transformers.optimization.Adafactor(
      model.parameters(), lr=5e-4, scale_parameter=True, relative_step=False, warmup_init=False,
      decay_rate=-0.8, clip_threshold=1.0)
  batch = {k: torch.from_numpy(v).long() for k, v in _random_batch(args, model.config.vocab_size).items()}

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
      out = model(input_ids=batch["encoder_input_tokens"],
                  decoder_input_ids=batch["decoder_input_tokens"],
                  labels=batch["decoder_target_tokens"])
    out.loss.backward()
    optimizer.step()
    return out.loss

  start = time.perf_counter()
  step()
  first_step_s = time.perf_counter() - start
  step_s = common.median(common.timed(lambda: [step() for _ in range(args.steps)], 3)) / args.steps
  tokens = args.batch * (args.inputs + args.targets)
  return {"step_s": step_s, "tokens_per_s": tokens / step_s, "first_step_s": first_step_s,
          "num_params": sum(p.numel() for p in model.parameters()),
          "threads": torch.get_num_threads(), "peak_rss_bytes": common.peak_rss_bytes()}


def main() -> None:
  args = _args()
  if args.only:
    common.emit(run_jax(args) if args.only == "jax" else run_torch(args))
    return
  extra = [f"--steps={args.steps}", f"--batch={args.batch}", f"--inputs={args.inputs}",
           f"--targets={args.targets}"]
  load_before = os.getloadavg()[0]
  jax_r, torch_r, ratios = common.compare_in_rounds(__file__, extra, args.rounds,
                                                   args.malloc_hugepages)
  common.emit({
      "benchmark": "train_step", "shape": f"{args.batch}x{args.inputs}/{args.targets}",
      "jax_tokens_per_s": round(jax_r["tokens_per_s"], 1),
      "torch_tokens_per_s": round(torch_r["tokens_per_s"], 1),
      "vs_torch": round(jax_r["tokens_per_s"] / torch_r["tokens_per_s"], 3),
      "vs_torch_rounds": ratios,
      "mfu": round(jax_r["mfu"], 4),
      "torch_mfu": round(jax_r["flops_per_step"] / torch_r["step_s"] / jax_r["bf16_peak_flops"], 4),
      "bf16_peak_gflops": round(jax_r["bf16_peak_flops"] / 1e9, 1),
      "jax_step_s": round(jax_r["step_s"], 3), "torch_step_s": round(torch_r["step_s"], 3),
      "compile_s": round(jax_r["compile_s"], 2), "first_step_s": round(jax_r["first_step_s"], 2),
      "torch_first_step_s": round(torch_r["first_step_s"], 2),
      "peak_mem_bytes": jax_r["peak_rss_bytes"], "torch_peak_mem_bytes": torch_r["peak_rss_bytes"],
      "xla_step_bytes": jax_r["xla_step_bytes"],
      "params_match": math.isclose(jax_r["num_params"], torch_r["num_params"], rel_tol=0.01),
      "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
      "malloc_hugepages": args.malloc_hugepages,
  })


if __name__ == "__main__":
  main()
