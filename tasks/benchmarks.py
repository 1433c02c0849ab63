"""The paper's evaluation benchmarks as SeqIO tasks, so a training run can evaluate on them.

One task per benchmark unit: `mmlu_direct_<subject>`, `mmlu_cot_<subject>`, `bbh_direct_<task>`,
`bbh_cot_<task>`, `tydiqa_<language>` (English included; it is left out of the TyDiQA score),
`mgsm_<language>`, `gsm8k`. Prompts and scoring are `flan_jax.evaluation`'s, so a SeqIO evaluator
reports the same `accuracy` (and TyDiQA `f1`) as `python -m flan_jax.eval`.

Data is read from `$FLAN_JAX_EVAL_DATA_DIR`, else ../shared/data beside the repository; the task
names come from that folder's listing at import time (nothing registers when it is absent). Splits
`test` and `validation` are the same scored examples (MMLU test rows, BBH tasks, TyDiQA dev, ...).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import templates
from flan_jax.data import user_tasks
from flan_jax.evaluation import benchmarks
from flan_jax.evaluation import scoring

DATA_DIR_ENV = "FLAN_JAX_EVAL_DATA_DIR"
SPLITS = ("test", "validation")
TASK_SOURCE = "benchmark"
# Separates TyDiQA's gold answers inside the `answers` string feature.
ANSWER_SEPARATOR = "\x1f"


def data_dir() -> Optional[Path]:
  configured = os.environ.get(DATA_DIR_ENV)
  return Path(configured) if configured else benchmarks.default_data_dir()


@functools.lru_cache(maxsize=None)
def _suite_by_task(suite: str, root: str) -> dict[str, list[benchmarks.Example]]:
  grouped: dict[str, list[benchmarks.Example]] = {}
  for example in benchmarks.load_suite(suite, root):
    grouped.setdefault(example.task, []).append(example)
  return grouped


def _dataset_fn(suite: str, task: str, name: str, template_type: str, split: str,
                shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  del shuffle_files, seed
  if split not in SPLITS:
    raise ValueError(f"Benchmark task '{name}' has no split '{split}': use {' or '.join(SPLITS)}.")
  examples = _suite_by_task(suite, str(data_dir()))[task]
  return tf.data.Dataset.from_tensor_slices({
      "inputs": [e.inputs for e in examples],
      "targets": [e.targets for e in examples],
      "answers": [ANSWER_SEPARATOR.join(e.answers or (e.targets,)) for e in examples],
      "_task_name": [name] * len(examples),
      "_task_source": [TASK_SOURCE] * len(examples),
      "_template_type": [template_type] * len(examples),
      "_template_idx": np.zeros(len(examples), np.int32),
  })


def _gold_answers(output: str, example: Optional[dict] = None, is_target: bool = False):
  """Targets become the tuple of gold answers (several for TyDiQA); predictions stay text."""
  if not is_target or example is None:
    return output
  answers = example["answers"]
  answers = answers.decode("utf-8") if isinstance(answers, bytes) else str(answers)
  return tuple(answers.split(ANSWER_SEPARATOR))


def _metric(template: benchmarks.Example):
  """A seqio metric fn scoring with the evaluation module's extraction and comparison."""

  def metric(targets: Sequence[tuple[str, ...]], predictions: Sequence[str]) -> dict[str, float]:
    results = [scoring.score_example(
        dataclasses.replace(template, targets=gold[0], answers=tuple(gold),
                            kind=template.kind or benchmarks.bbh_kind(gold[0])), [prediction])
               for gold, prediction in zip(targets, predictions, strict=True)]
    out = {"accuracy": 100.0 * float(np.mean([r.correct for r in results])) if results else 0.0}
    if template.kind == "span":
      out["f1"] = 100.0 * float(np.mean([r.f1 for r in results])) if results else 0.0
    return out

  return metric


def _task_names(suite: str, root: Path) -> list[str]:
  if suite.startswith("mmlu"):
    return benchmarks.mmlu_subjects(root)
  if suite.startswith("bbh"):
    return benchmarks.bbh_tasks(root)
  if suite == "mgsm":
    return list(benchmarks.MGSM_LANGUAGES)
  if suite == "gsm8k":
    return ["gsm8k"]
  return list(benchmarks.TYDIQA_LANGUAGES)


def _template_type(suite: str) -> str:
  if suite in ("mmlu_cot", "bbh_cot", "mgsm", "gsm8k"):
    return templates.FS_COT
  return templates.FS_OPT if suite.startswith(("mmlu", "bbh")) else templates.FS_NOOPT


def _register(suite: str, task: str, template: benchmarks.Example) -> str:
  name = suite if task == suite else f"{suite}_{task}"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          functools.partial(_dataset_fn, suite, task, name, _template_type(suite)),
          splits=list(SPLITS)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=_gold_answers,
      output_features=user_tasks.t5_output_features(),
      metric_fns=[_metric(template)],
  )
  return name


def register_all(root: Optional[Path]) -> list[str]:
  """Registers every benchmark task found under `root`; returns their names."""
  if root is None or not Path(root).is_dir():
    return []
  names = []
  for suite in benchmarks.SUITES:
    try:
      task_names = _task_names(suite, Path(root))
    except benchmarks.BenchmarkDataError:
      continue  # this benchmark's files are not in the data dir
    for task in task_names:
      # BBH mixes letter and free-form answers: its kind is decided per example ("" here).
      kind = {"mmlu": "choice", "bbh": "", "tydiqa": "span"}.get(suite.split("_")[0], "number")
      template = benchmarks.Example(id="", benchmark=suite, task=task, inputs="", targets="",
                                    kind=kind)
      if suite == "mgsm":
        template = dataclasses.replace(template, phrases=benchmarks.mgsm_phrases(Path(root), task))
      names.append(_register(suite, task, template))
  return names


BENCHMARK_TASKS = tuple(register_all(data_dir()))
