r"""Greedy decoding speed with the KV cache on this CPU: flan_jax vs Hugging Face `generate`.

  .venv/bin/python bench/decode.py [--batch=8] [--inputs=512] [--decode_length=128] [--rounds=1]

Flan-T5-small shapes on both sides, random weights, greedy decoding of exactly `decode_length`
tokens per sequence (pad and EOS get zero output columns on both sides, so neither stops early).
flan_jax runs `predict_batch` (jitted, KV cache, bf16 activations); Hugging Face runs
`generate(num_beams=1, do_sample=False)` with its cache, in float32 and under bf16 autocast, and
the faster of the two is the reference. Each side runs in its own process.
The last line is JSON: tokens/s of both, `vs_hf` (flan_jax / HF tokens/s), flan_jax's split of a
decode into the encoder call (`jax_encode_s`, timed alone) and the rest per generated position
(`jax_step_ms`), time to first decode (flan_jax: compile + run), peak memory, and the 1-minute
load average before each side ran (the machine may be shared: compare ratios only from runs at
similar load). With `--rounds=N` both sides run N times in turn; the figures are those of each
side's median round, and `vs_hf_rounds` lists every round's ratio.
"""
from __future__ import annotations

import argparse
import os

import common

NEVER_IDS = [0, 1]  # pad and EOS: zero output columns, so decoding runs its full length


def _args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=["jax", "torch"], help="run one side (used internally)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--decode_length", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="PyTorch intra-op threads (0: its default, one per core). On a loaded "
                           "machine use 1: OpenMP threads that spin-wait on busy cores made HF "
                           "decode steps ~30x slower here")
  common.add_hugepages_flag(parser)
  common.add_rounds_flag(parser)
  return parser.parse_args(argv)


def _inputs(args, vocab_size: int):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  return rng.integers(2, vocab_size - 200, (args.batch, args.inputs), dtype=np.int32)


def run_jax(args) -> dict:
  import time  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from flan_jax.data import vocab  # pylint: disable=import-outside-toplevel
  from flan_jax.models import build_model_from_config, configs  # pylint: disable=import-outside-toplevel
  from flan_jax.trainer import unbox  # pylint: disable=import-outside-toplevel

  config = configs.CONFIGS["flan_t5_small"]
  model = build_model_from_config(config, vocab.t5_vocabulary())
  inputs = _inputs(args, config.vocab_size)
  targets = np.zeros((args.batch, args.decode_length), np.int32)
  batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": targets,
           "decoder_target_tokens": targets}
  shapes = {k: v.shape for k, v in batch.items()}
  params = unbox(jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.key(0))["params"])
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"].at[:, NEVER_IDS].set(0.0)

  def decode():
    return np.asarray(model.predict_batch(params, batch, max_decode_length=args.decode_length))

  encode_jit = jax.jit(lambda p, tokens: model.module.apply(
      {"params": p}, tokens, enable_dropout=False, method=model.module.encode))

  def encode():
    return encode_jit(params, inputs).block_until_ready()

  load = os.getloadavg()[0]
  start = time.perf_counter()
  first = decode()
  first_s = time.perf_counter() - start
  seconds = common.median(common.timed(decode, args.repeats))
  encode()
  encode_s = common.median(common.timed(encode, args.repeats))
  generated = int((first != 0).sum())
  return {"seconds": seconds, "load_avg": load, "tokens_per_s": args.batch * args.decode_length / seconds,
          "encode_s": encode_s, "step_ms": 1e3 * (seconds - encode_s) / args.decode_length,
          "first_decode_s": first_s, "generated_tokens": generated,
          "peak_rss_gib": common.peak_rss_bytes() / 2 ** 30}


def run_torch(args) -> dict:
  import contextlib  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import torch  # pylint: disable=import-outside-toplevel

  load = os.getloadavg()[0]
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  torch.manual_seed(0)
  model = common.hf_t5_v1_1_small().eval()
  with torch.no_grad():
    model.lm_head.weight[NEVER_IDS] = 0.0
  inputs = torch.from_numpy(_inputs(args, model.config.vocab_size)).long()
  results = {}
  for name, autocast in (("f32", contextlib.nullcontext), ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):
    def generate():
      with torch.inference_mode(), autocast():
        return model.generate(inputs, max_new_tokens=args.decode_length,
                              min_new_tokens=args.decode_length, num_beams=1, do_sample=False)
    start = time.perf_counter()
    out = generate()
    first_s = time.perf_counter() - start
    seconds = common.median(common.timed(generate, args.repeats))
    results[name] = {"seconds": seconds, "tokens_per_s": args.batch * args.decode_length / seconds,
                     "first_decode_s": first_s, "generated_tokens": int((out[:, 1:] != 0).sum())}
  best = max(results, key=lambda k: results[k]["tokens_per_s"])
  return {**results[best], "best": best, "by_dtype": results, "threads": torch.get_num_threads(),
          "load_avg": load,
          "peak_rss_gib": common.peak_rss_bytes() / 2 ** 30}


def main() -> None:
  args = _args()
  if args.only:
    common.emit(run_jax(args) if args.only == "jax" else run_torch(args))
    return
  extra = [f"--batch={args.batch}", f"--inputs={args.inputs}", f"--decode_length={args.decode_length}",
           f"--repeats={args.repeats}", f"--torch_threads={args.torch_threads}"]
  jax_r, torch_r, ratios = common.compare_in_rounds(__file__, extra, args.rounds,
                                                   args.malloc_hugepages)
  common.emit({
      "benchmark": "greedy_decode", "shape": f"{args.batch}x{args.inputs} -> {args.decode_length}",
      "jax_tokens_per_s": round(jax_r["tokens_per_s"], 1),
      "hf_tokens_per_s": round(torch_r["tokens_per_s"], 1), "hf_dtype": torch_r["best"],
      "vs_hf": round(jax_r["tokens_per_s"] / torch_r["tokens_per_s"], 3),
      "vs_hf_rounds": ratios,
      "jax_encode_s": round(jax_r["encode_s"], 3), "jax_step_ms": round(jax_r["step_ms"], 2),
      "jax_first_decode_s": round(jax_r["first_decode_s"], 2),
      "hf_first_decode_s": round(torch_r["first_decode_s"], 2),
      "jax_peak_rss_gib": round(jax_r["peak_rss_gib"], 2),
      "hf_peak_rss_gib": round(torch_r["peak_rss_gib"], 2),
      "load_avg": [jax_r["load_avg"], torch_r["load_avg"]],
      "malloc_hugepages": args.malloc_hugepages,
      "full_length": jax_r["generated_tokens"] == torch_r["generated_tokens"] == args.batch * args.decode_length,
  })


if __name__ == "__main__":
  main()
