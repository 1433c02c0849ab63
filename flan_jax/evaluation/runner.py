"""Getting predictions for benchmark examples from a loaded model (`flan_jax.api.LoadedModel`).

Two ways: decoding (greedy, or `num_samples` sampled chains for self-consistency) and rank
classification (the option with the highest log-likelihood under the model's `score`, for examples
with a closed set of options; others fall back to decoding).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import gin

from flan_jax.evaluation import benchmarks

# Prompts handed to the model per call; progress is reported after each chunk.
CHUNK = 64


def _progress(done: int, total: int, start: float, what: str) -> None:
  rate = done / max(time.time() - start, 1e-9)
  print(f"[eval] {what}: {done}/{total} examples ({rate:.1f}/s)", file=sys.stderr, flush=True)


@gin.configurable
def generate_predictions(model: Any, examples: Sequence[benchmarks.Example], *,
                         num_samples: int = 1, temperature: float = 0.7, topk: int = 40,
                         max_decode_length: int = 256, batch_size: int = 8,
                         max_input_length: int | None = None, seed: int = 0) -> dict[str, list[str]]:
  """{example id: [output, ...]}: greedy when num_samples == 1, else sampled chains to vote over."""
  predictions: dict[str, list[str]] = {}
  start = time.time()
  for begin in range(0, len(examples), CHUNK):
    chunk = examples[begin:begin + CHUNK]
    prompts = [e.inputs for e in chunk]
    if num_samples == 1:
      outputs = model.generate(prompts, decode="greedy", max_decode_length=max_decode_length,
                               batch_size=batch_size, max_input_length=max_input_length)
      outputs = [[o] for o in outputs]
    else:
      outputs = model.generate(prompts, decode="sample", num_samples=num_samples,
                               temperature=temperature, topk=topk, seed=seed + begin,
                               max_decode_length=max_decode_length, batch_size=batch_size,
                               max_input_length=max_input_length)
    for example, samples in zip(chunk, outputs, strict=True):
      predictions[example.id] = list(samples)
    _progress(begin + len(chunk), len(examples), start, "decoding")
  return predictions


def rank_classification(model: Any, examples: Sequence[benchmarks.Example], *,
                        batch_size: int = 8,
                        max_input_length: int | None = None) -> dict[str, list[str]]:
  """{example id: [best option]} for examples with options, by the model's log-likelihood."""
  pairs = [(e, option) for e in examples for option in e.options]
  scores: list[float] = []
  start = time.time()
  for begin in range(0, len(pairs), CHUNK):
    chunk = pairs[begin:begin + CHUNK]
    scores += model.score([e.inputs for e, _ in chunk], [o for _, o in chunk],
                          batch_size=batch_size, max_input_length=max_input_length)
    _progress(min(len(pairs), begin + CHUNK), len(pairs), start, "rank classification (options)")
  best: dict[str, tuple[float, str]] = {}
  for (example, option), score in zip(pairs, scores, strict=True):
    if example.id not in best or score > best[example.id][0]:  # first option wins ties
      best[example.id] = (score, option)
  return {k: [option] for k, (_, option) in best.items()}
