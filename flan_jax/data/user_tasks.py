"""Registering instruction tasks: a data source + a template family → SeqIO tasks, one per variant.

The collections in `flan_jax/tasks/` use exactly this helper, so they double as examples. A user's
own JSONL becomes trainable tasks in a few lines:

    from flan_jax.data import sources, templates, user_tasks
    family = templates.TemplateFamily("my_qa", (
        templates.Template("{question}\n{options}", "{answer}"),
        templates.Template("Answer this: {question}\n{options}", "{answer}")))
    user_tasks.register_task(
        "my_qa", sources.local_source({"train": "my_qa.jsonl"}, required=("question", "answer")),
        family, ("zs_opt", "zs_noopt"), collection="user")

That registers `my_qa_zs_opt` and `my_qa_zs_noopt` (rows need `question`, `answer`, `options`).
Registration reads no data; it is read when a dataset is first requested.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from flan_jax.data import formatting
from flan_jax.data import templates
from flan_jax.data import vocab

# Public location of the T5 SentencePiece model, used when no local copy is configured.
T5_VOCAB_GCS = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
Preprocessor = Callable[..., tf.data.Dataset]


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
  """One base task of a collection and the SeqIO task registered for each of its template types."""
  collection: str
  base_name: str
  variants: Mapping[str, str]  # template type → registered task name
  num_examples: Optional[int]
  count_source: str


# collection → base task name → entry; filled by `register_task`.
CATALOG: dict[str, dict[str, CatalogEntry]] = {}


@functools.lru_cache(maxsize=None)
def t5_output_features() -> dict[str, seqio.Feature]:
  """`inputs`/`targets` features with the T5 vocabulary (local copy if found, else its GCS path).

  The vocabulary file is opened lazily, so registering tasks works without it.
  """
  try:
    vocabulary = vocab.t5_vocabulary()
  except FileNotFoundError:
    vocabulary = seqio.SentencePieceVocabulary(
        os.environ.get(vocab.T5_VOCAB_ENV) or T5_VOCAB_GCS, extra_ids=vocab.EXTRA_IDS)
  return {"inputs": seqio.Feature(vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def exemplars_from_source(source: seqio.DataSource, preprocessors: Sequence[Preprocessor] = (),
                          split: str = "train") -> Callable[[], Iterable[dict[str, Any]]]:
  """A lazy few-shot exemplar pool: canonical examples of `split` after the row preprocessors."""

  def read() -> Iterable[dict[str, Any]]:
    dataset = source.get_dataset(split, shuffle=False)
    for preprocess in preprocessors:
      dataset = preprocess(dataset)
    return (formatting.to_python(e) for e in dataset.as_numpy_iterator())

  return read


def variant_name(base_name: str, template_type: str) -> str:
  return f"{base_name}_{template_type}"


def register_task(base_name: str, source: seqio.DataSource, family: templates.TemplateFamily,
                  template_types: Sequence[str], *, collection: str,
                  row_preprocessors: Sequence[Preprocessor] = (),
                  exemplars: Optional[formatting.ExemplarSource] = None,
                  num_examples: Optional[int] = None, count_source: str = "unknown",
                  output_features: Optional[Mapping[str, seqio.Feature]] = None,
                  metric_fns: Sequence[Callable[..., Any]] = (), seed: int = 0,
                  options_mode: str = "deterministic",
                  drop_rows_without_options: bool = False) -> dict[str, str]:
  """Registers `<base_name>_<template_type>` for each template type; returns {type: task name}.

  Args:
    base_name: the dataset's task name, e.g. "cot_gsm8k".
    source: a SeqIO data source of raw rows (see `flan_jax.data.sources`).
    family: the template family rendering canonical examples.
    template_types: e.g. ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt") or ("zs_cot", "fs_cot");
      types the family cannot render are left out.
    collection: collection name recorded in `CATALOG` and as `_task_source`.
    row_preprocessors: map raw rows to canonical examples (e.g. `sources.field_mapper(...)`).
    exemplars: few-shot pool; default: the source's train split after `row_preprocessors`.
    num_examples: training examples, for capped mixing rates; `count_source` says where it is from.
    output_features: default T5 vocabulary `inputs`/`targets`.
    drop_rows_without_options: the option variants (and their exemplar pools) skip rows whose
      `options` is empty, for sources that mix multiple-choice and open rows (P3 exports).
  """
  features = output_features or t5_output_features()
  types = [t for t in template_types if family.supports(t)]
  if not types:
    raise ValueError(f"Task '{base_name}': family '{family.name}' supports none of "
                     f"{', '.join(template_types)}.")
  pools = {}  # exemplar pool per row-preprocessor chain, read lazily
  variants = {}
  for template_type in types:
    name = variant_name(base_name, template_type)
    filtered = drop_rows_without_options and template_type in templates.OPTION_TYPES
    preprocessors = [*row_preprocessors, *((_keep_rows_with_options,) if filtered else ())]
    pool = exemplars
    if pool is None and template_type in templates.FEW_SHOT_TYPES:
      pool = pools.setdefault(filtered, exemplars_from_source(source, preprocessors))
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=source,
        preprocessors=[
            *preprocessors,
            formatting.make_preprocessor(family, template_type, task_name=name,
                                         task_source=collection, seed=seed,
                                         options_mode=options_mode, exemplars=pool,
                                         tokenize=True),
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=features, metric_fns=list(metric_fns))
    variants[template_type] = name
  CATALOG.setdefault(collection, {})[base_name] = CatalogEntry(
      collection, base_name, variants, num_examples, count_source)
  return variants


def _keep_rows_with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.filter(lambda example: tf.size(example["options"]) > 0)


def register_prerendered_task(name: str, source: seqio.DataSource, *, collection: str,
                              num_examples: Optional[int] = None,
                              count_source: str = "unknown") -> str:
  """Registers a task over already-rendered rows (`sources.flan_jsonl_source`): tokenize only."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=t5_output_features())
  CATALOG.setdefault(collection, {})[name] = CatalogEntry(
      collection, name, {"prerendered": name}, num_examples, count_source)
  return name
