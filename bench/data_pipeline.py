"""Input pipeline throughput: the CoT mixture rendered + tokenized + packed at 2,048/512, against
plain SeqIO tokenization of the same TSV rows (no templates, no packing).

    python bench/data_pipeline.py [--examples 2000]

Both sides read the seven CoT TSVs present in ../shared/data/flan_cot with the T5 vocabulary, in one
process, one after the other (the second pass of each is timed, so file reads and SentencePiece
loading are warm). "flan" = the CoT datasets' zs_cot and fs_cot tasks (1:1, capped rates) rendered,
tokenized, mixed, then packed by the encoder-decoder converter, twice: tokenized by
`seqio.preprocessors.tokenize` after the formatter (`flan_seqio_tok`), and by the formatter itself
(`make_preprocessor(tokenize=True)`, `flan_python_tok`; same ids). "plain" = question → inputs,
rationale + answer → targets, tokenized, unpacked. Throughput is input examples per second over
`--examples` examples from `get_dataset` on, so it includes each task's pipeline start-up (14
tasks here); `first_batch_s` is the time to the first packed batch (packing reads ahead, so it
already covers a good part of the examples). The last line is a JSON object with the ratios.
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
from flan_jax.data import formatting  # noqa: E402  pylint: disable=g-import-not-at-top
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


def register_mixture(names: list[str], python_tokenize: bool) -> str:
  """A mixture of the zs_cot/fs_cot tasks of `names` (as `flan_jax.tasks.cot`), tokenized one way."""
  variant = "python_tok" if python_tokenize else "seqio_tok"
  features = user_tasks.t5_output_features()
  entries = []
  for name in names:
    file_name, count, _ = cot.DATASETS[name]
    source = sources.cot_tsv_source(cot.tsv_path(file_name), num_examples=count)
    exemplars = user_tasks.exemplars_from_source(source)
    for template_type in cot.COT_TYPES:
      task_name = f"bench_{variant}_{name}_{template_type}"
      if task_name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(task_name)
      seqio.TaskRegistry.add(task_name, source=source, output_features=features, preprocessors=[
          formatting.make_preprocessor(cot.COT_FAMILY, template_type,
                                       task_name=f"cot_{name}_{template_type}",
                                       task_source=cot.COLLECTION, exemplars=exemplars,
                                       tokenize=python_tokenize),
          *(() if python_tokenize else (seqio.preprocessors.tokenize,)),
          seqio.preprocessors.append_eos_after_trim])
      entries.append((task_name, mixing.capped_rate(count, mixing.CAPS["cot"])))
  return mixing.register_mixture(f"bench_cot_{variant}", entries)


def flan_pipeline(mixture: str, n: int) -> tuple[int, float]:
  """Renders, tokenizes, mixes and packs `n` examples; (packed rows, seconds to the first batch)."""
  start = time.perf_counter()
  dataset = seqio.get_mixture_or_task(mixture).get_dataset(
      LENGTHS, split="train", shuffle=False, seed=0).take(n)
  rows, first = 0, None
  for batch in feature_conversion.packed_batches(dataset, "encdec",
                                                 batch_size=BATCH).as_numpy_iterator():
    first = first or time.perf_counter() - start
    rows += len(batch["encoder_input_tokens"])
  return rows, first


def plain_pipeline(names: list[str], n: int) -> tuple[int, float]:
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
  start, rows, first = time.perf_counter(), 0, None
  for _ in dataset.as_numpy_iterator():
    first = first or time.perf_counter() - start
    rows += 1
  return rows, first


def measure(fn, arg, n: int) -> dict[str, float]:
  fn(arg, min(n, 200))  # warm: files, vocabulary, tf.data functions
  start = time.perf_counter()
  rows, first = fn(arg, n)
  seconds = time.perf_counter() - start
  return {"examples_per_s": round(n / seconds, 1), "first_batch_s": round(first, 2), "rows": rows}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--examples", type=int, default=2000)
  args = parser.parse_args()
  names = available_cot_tasks()
  n = args.examples
  results = {"flan_seqio_tok": measure(flan_pipeline, register_mixture(names, False), n),
             "flan_python_tok": measure(flan_pipeline, register_mixture(names, True), n),
             "plain": measure(plain_pipeline, names, n)}
  print(f"datasets: {', '.join(names)}; {n} examples; load average {os.getloadavg()[0]:.1f}")
  for label, r in results.items():
    print(f"{label:>16}: {r['examples_per_s']:7.1f} examples/s  (first batch after "
          f"{r['first_batch_s']:.1f} s; {r['rows']} rows)")
  plain = results["plain"]["examples_per_s"]
  print(json.dumps({**{f"{k}_examples_per_s": r["examples_per_s"] for k, r in results.items()},
                    **{f"{k}_first_batch_s": r["first_batch_s"] for k, r in results.items()},
                    "flan_over_plain": round(
                        results["flan_python_tok"]["examples_per_s"] / plain, 3),
                    "flan_seqio_tok_over_plain": round(
                        results["flan_seqio_tok"]["examples_per_s"] / plain, 3),
                    "examples_per_packed_row": round(n / max(results["flan_python_tok"]["rows"], 1),
                                                     2)}))


if __name__ == "__main__":
  main()
