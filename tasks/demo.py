"""The embedded demo tasks `demo_<family>`: procedurally generated instruction data (no downloads).

Each family of `flan_jax.data.demo_generators` becomes one SeqIO task whose template types rotate by
stream position (zero-shot, few-shot, options/no options; CoT for arithmetic). Train and validation
are disjoint and fixed (seed `DEMO_SEED`); the demo vocabulary is trained on them at first use.
Every task reports `accuracy` (exact match; for arithmetic, on the answer after "the answer is").
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import io
import itertools
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import demo_generators
from flan_jax.data import formatting
from flan_jax.data import templates
from flan_jax.data import vocab

DEMO_SEED = 0
DEMO_TASK_FEATURE_LENGTHS = {"inputs": 128, "targets": 64}
# Few-shot prompts are pruned to this many input tokens (room left for EOS within 128).
DEMO_MAX_INPUT_TOKENS = 120
NUM_EXAMPLES = {"train": 20000, "validation": 200}
EXEMPLAR_POOL_SIZE = 500
TASK_SOURCE = "demo"


def _normalize(text: str) -> str:
  return " ".join(text.strip().lower().split())


def exact_match_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Fraction of predictions equal to their target (case and spacing ignored)."""
  hits = [_normalize(t) == _normalize(p) for t, p in zip(targets, predictions, strict=True)]
  return {"accuracy": float(np.mean(hits)) if hits else 0.0}


def final_answer_accuracy(targets: Sequence[str],
                          predictions: Sequence[str]) -> dict[str, float]:
  """Exact match on the final answers (`templates.extract_answer`) of targets and predictions."""
  return exact_match_accuracy([templates.extract_answer(t) for t in targets],
                              [templates.extract_answer(p) for p in predictions])


@functools.lru_cache(maxsize=None)
def split_columns(family_name: str, split: str) -> dict[str, np.ndarray]:
  """The fixed demo split as numpy columns, generated once and then read from disk.

  Generating 20,000 examples per family in Python took ~6-9 s per `get_dataset` of the mixture
  (start-up and every eval). The columns are memoized in-process and stored as an `.npz` under
  `$FLAN_JAX_CACHE_DIR/demo_data/`, named by a hash of the seed, the size and the generator
  module's source, so changing a generator regenerates the data. Writes are atomic (temp + rename).
  """
  demo = demo_generators.FAMILIES[family_name]
  count = NUM_EXAMPLES[split]
  digest = hashlib.sha256(f"{DEMO_SEED}:{count}:".encode())
  digest.update(inspect.getsource(demo_generators).encode("utf-8"))
  path = vocab.cache_dir() / "demo_data" / f"{family_name}-{split}-{digest.hexdigest()[:16]}.npz"
  if path.exists():
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  examples = list(itertools.islice(demo_generators.generate(demo, split, DEMO_SEED), count))
  # Option lists differ in length only across families, never within one: a 2-D string array.
  columns = {key: np.array([e[key] for e in examples]) for key in examples[0]}
  buffer = io.BytesIO()
  np.savez(buffer, **columns)
  vocab.atomic_write(path, buffer.getvalue())
  return columns


def _dataset_fn(demo: demo_generators.DemoFamily, split: str, shuffle_files: bool,
                seed: Optional[int] = None) -> tf.data.Dataset:
  """The fixed demo split (`shuffle_files` and `seed` do not apply: the data is generated)."""
  del shuffle_files, seed
  if split not in NUM_EXAMPLES:
    raise ValueError(f"Demo task 'demo_{demo.name}' has no split '{split}': use "
                     f"{' or '.join(NUM_EXAMPLES)}.")
  return tf.data.Dataset.from_tensor_slices(split_columns(demo.name, split))


class _GeneratedSource(seqio.FunctionDataSource):
  """A function source for fixed generated data, which has no files to shuffle.

  seqio warns about "insufficient shuffling on restarts" whenever a function source is asked to
  shuffle; here the examples are shuffled by the Task's shuffle buffer instead, so the source is
  always read in order and the warning (printed once per task and run) does not apply.
  """

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, **kwargs) -> tf.data.Dataset:
    del shuffle
    return super().get_dataset(split, shuffle=False, seed=seed, shard_info=shard_info, **kwargs)


def _exemplars(demo: demo_generators.DemoFamily) -> list[dict]:
  # A different seed than the train stream, but still train-split examples (never validation).
  return list(itertools.islice(demo_generators.generate(demo, "train", DEMO_SEED + 1),
                               EXEMPLAR_POOL_SIZE))


def _register(demo: demo_generators.DemoFamily, output_features: dict) -> str:
  name = f"demo_{demo.name}"
  metric = (final_answer_accuracy if templates.ZS_COT in demo.template_types
            else exact_match_accuracy)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=_GeneratedSource(functools.partial(_dataset_fn, demo), splits=list(NUM_EXAMPLES),
                              num_input_examples=dict(NUM_EXAMPLES)),
      preprocessors=[
          formatting.make_preprocessor(
              demo.family, demo.template_types, task_name=name, task_source=TASK_SOURCE,
              seed=DEMO_SEED, exemplars=functools.partial(_exemplars, demo),
              fewshot=formatting.FewShotConfig(max_input_tokens=DEMO_MAX_INPUT_TOKENS),
              tokenize=True),  # in place of seqio.preprocessors.tokenize: same ids, no TF op
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features,
      metric_fns=[metric],
  )
  return name


def _output_features() -> dict[str, seqio.Feature]:
  vocabulary = vocab.demo_vocabulary()
  return {"inputs": seqio.Feature(vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


DEMO_TASKS = tuple(_register(d, _output_features()) for d in demo_generators.FAMILIES.values())
CHANCE = {f"demo_{d.name}": d.chance for d in demo_generators.FAMILIES.values()}
