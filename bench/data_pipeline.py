"""Input pipeline throughput: the CoT mixture rendered + tokenized + packed at 2,048/512, against
plain SeqIO tokenization of the same TSV rows (no templates, no packing).

    python bench/data_pipeline.py [--examples 2000]

Both sides read the seven CoT TSVs present in ../shared/data/flan_cot with the T5 vocabulary, in one
process, one after the other (the second pass of each is timed, so file reads and SentencePiece
loading are warm). "flan" = `cot_main` restricted to the available datasets (zs_cot : fs_cot = 1:1,
capped rates), mixed, then packed by the encoder-decoder converter; "plain" = question → inputs,
rationale + answer → targets, tokenized, unpacked. Throughput is input examples per second. The last
line is a JSON object with the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUIET_ENV  # pylint: disable=g-import-not-at-top,wrong-import-position

os.environ.update(QUIET_ENV)

import seqio  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from flan_jax.data import feature_conversion  # noqa: E402  pylint: disable=g-import-not-at-top
from flan_jax.data import mixing  # noqa: E402  pylint: disable=g-import-not-at-top
from flan_jax.data import sources  # noqa: E402  pylint: disable=g-import-not-at-top
from flan_jax.data import user_tasks  # noqa: E402  pylint: disable=g-import-not-at-top
from flan_jax.tasks import cot  # noqa: E402  pylint: disable=g-import-not-at-top

LENGTHS = feature_conversion.FLAN_FEATURE_LENGTHS
BATCH = 8


def available_cot_tasks() -> list[str]:
  present = [n for n, (f, _, _) in cot.DATASETS.items() if cot.tsv_path(f).exists()]
  if not present:
    raise SystemExit("error: no CoT TSVs under $FLAN_JAX_DATA_DIR/flan_cot; nothing to benchmark")
  return present


def flan_pipeline(names: list[str], n: int) -> int:
  """Renders, tokenizes, mixes and packs `n` examples; returns the number of packed rows."""
  entries = []
  for name in names:
    entry = user_tasks.CATALOG["cot"][f"cot_{name}"]
    for task in entry.variants.values():
      entries.append((task, mixing.capped_rate(entry.num_examples, mixing.CAPS["cot"])))
  mixing.register_mixture("bench_cot_available", entries)
  dataset = seqio.get_mixture_or_task("bench_cot_available").get_dataset(
      LENGTHS, split="train", shuffle=False, seed=0).take(n)
  rows = 0
  for batch in feature_conversion.packed_batches(dataset, "encdec",
                                                 batch_size=BATCH).as_numpy_iterator():
    rows += len(batch["encoder_input_tokens"])
  return rows


def plain_pipeline(names: list[str], n: int) -> int:
  """Tokenizes `n` raw rows (question → inputs, rationale + answer → targets) without templates."""
  vocabulary = user_tasks.t5_output_features()["inputs"].vocabulary
  datasets = []
  for name in names:
    rows = sources.read_tsv(cot.tsv_path(cot.DATASETS[name][0]), sources.COT_COLUMNS)
    datasets.append(tf.data.Dataset.from_tensor_slices({
        "inputs": [r["question"] for r in rows],
        "targets": [f"{r['rationale']} {r['answer']}" for r in rows]}))
  dataset = tf.data.Dataset.sample_from_datasets(datasets, seed=0).take(n)
  dataset = seqio.preprocessors.tokenize(
      dataset, {"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)})
  return sum(1 for _ in dataset.as_numpy_iterator())


def measure(fn, names, n):
  fn(names, min(n, 200))  # warm: files, vocabulary, tf.data functions
  start = time.perf_counter()
  result = fn(names, n)
  return time.perf_counter() - start, result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--examples", type=int, default=2000)
  args = parser.parse_args()
  names = available_cot_tasks()
  flan_s, packed_rows = measure(flan_pipeline, names, args.examples)
  plain_s, plain_rows = measure(plain_pipeline, names, args.examples)
  flan_rate, plain_rate = args.examples / flan_s, plain_rows / plain_s
  print(f"datasets: {', '.join(names)}; {args.examples} examples")
  print(f"flan (render + tokenize + mix + pack 2048/512): {flan_rate:.0f} examples/s, "
        f"{packed_rows} packed rows ({args.examples / max(packed_rows, 1):.1f} examples/row)")
  print(f"plain seqio tokenization: {plain_rate:.0f} examples/s")
  print(json.dumps({"flan_examples_per_s": round(flan_rate, 1),
                    "plain_examples_per_s": round(plain_rate, 1),
                    "flan_over_plain": round(flan_rate / plain_rate, 3),
                    "examples_per_packed_row": round(args.examples / max(packed_rows, 1), 2)}))


if __name__ == "__main__":
  main()
