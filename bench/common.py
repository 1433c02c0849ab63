"""Shared benchmark plumbing: one subprocess per framework, timing, the CPU's matmul peak, peak RSS.

Each framework runs in its own process (`--only=jax` / `--only=torch`) so the peak resident memory
of one does not include the other, and neither runs while the other is being timed. The parent
prints every worker's JSON and, as its last line, one JSON object with the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "JAX_PLATFORMS": "cpu"}
# XLA:CPU allocates a program's temporaries afresh on every call (hundreds of MB for a decode, GBs
# for a train step) and glibc serves them with new mmaps, which the kernel faults in 4 KiB at a
# time. With this tunable glibc asks for transparent huge pages for them (where
# /sys/kernel/mm/transparent_hugepage/enabled allows `madvise`). PyTorch's workers get it too.
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def add_hugepages_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--malloc_hugepages", action=argparse.BooleanOptionalAction, default=True,
                      help=f"run every worker with GLIBC_TUNABLES={HUGEPAGE_TUNABLE}")


def run_workers(script: str, names: Sequence[str], extra_args: Sequence[str] = (),
                malloc_hugepages: bool = False) -> dict[str, dict[str, Any]]:
  """Runs `script --only=NAME` for each name, with the same environment; returns {name: the JSON
  its last line printed}."""
  env = {**os.environ, **QUIET_ENV}
  if malloc_hugepages:
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), HUGEPAGE_TUNABLE]))
  results = {}
  for name in names:
    proc = subprocess.run([sys.executable, script, f"--only={name}", *extra_args], env=env,
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
      sys.stderr.write(proc.stderr[-3000:])
      raise SystemExit(f"error: benchmark worker '{name}' failed (exit {proc.returncode}); its stderr is above")
    results[name] = json.loads(lines[-1])
    print(f"{name}: {lines[-1]}", flush=True)
  return results


def compare_in_rounds(script: str, extra_args: Sequence[str], rounds: int,
                      malloc_hugepages: bool = False) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
  """Runs the `jax` and `torch` workers `rounds` times in turn (jax, torch, jax, torch, ...).

  Returns each side's median round by tokens/s (the lower middle one for an even count) and every
  round's jax / torch tokens/s ratio. Alternating the sides spreads a change in the machine's load
  over both, and the spread of the ratios shows how far one round can be trusted on a shared
  machine."""
  results: dict[str, list[dict[str, Any]]] = {"jax": [], "torch": []}
  for round_index in range(rounds):
    if rounds > 1:
      print(f"round {round_index + 1} of {rounds}", flush=True)
    for name, result in run_workers(script, list(results), extra_args, malloc_hugepages).items():
      results[name].append(result)
  medians = [median_round(results[name]) for name in ("jax", "torch")]
  ratios = [round(j["tokens_per_s"] / t["tokens_per_s"], 3)
            for j, t in zip(results["jax"], results["torch"])]
  return medians[0], medians[1], ratios


def median_round(results: Sequence[dict[str, Any]], key: str = "tokens_per_s") -> dict[str, Any]:
  """The result whose `key` is the median (the lower middle one for an even count)."""
  ordered = sorted(results, key=lambda r: r[key])
  return ordered[(len(ordered) - 1) // 2]


def add_rounds_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--rounds", type=int, default=1,
                      help="run both sides this many times in turn; report each side's median "
                           "round and every round's ratio")


def timed(fn: Callable[[], Any], iterations: int) -> list[float]:
  """Wall-clock seconds of each call; `fn` must block until its result is ready."""
  times = []
  for _ in range(iterations):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median(values: Sequence[float]) -> float:
  ordered = sorted(values)
  mid = len(ordered) // 2
  return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def jax_bf16_matmul_peak(size: int = 2048, iterations: int = 10) -> float:
  """Measured FLOP/s of a bf16 × bf16 → f32-accumulated matmul in JAX (the CPU's practical peak)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  dot(a, b).block_until_ready()
  seconds = min(timed(lambda: dot(a, b).block_until_ready(), iterations))
  return 2.0 * size ** 3 / seconds


def emit(result: dict[str, Any]) -> None:
  """The JSON line a worker or the parent ends with."""
  print(json.dumps(result), flush=True)


def hf_t5_v1_1_small(dropout_rate: float = 0.0):
  """Hugging Face T5ForConditionalGeneration with T5 v1.1-small shapes and untied logits (77M).

  transformers 5.x ties T5's output layer to the embedding whatever the config says; v1.1 is
  untied, so the head gets its own parameter and leaves the tied-weights table.
  """
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  config = transformers.T5Config(
      vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
      num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      dropout_rate=dropout_rate, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config)
  model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone().normal_(0.0, 0.05))
  tied = dict(model.all_tied_weights_keys)
  tied.pop("lm_head.weight", None)
  model.all_tied_weights_keys = tied
  return model
