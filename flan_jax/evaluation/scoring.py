"""Scoring predictions: per-example correctness, self-consistency, per-task and benchmark scores, and
the paper's normalized average.

Every benchmark score is the unweighted mean over its tasks (MMLU subjects, BBH tasks, TyDiQA
languages without English, MGSM languages), in percent.

Normalized average (random guessing = 0): each of the six paper scores s with random baseline r
becomes 100 * (s - r) / (100 - r), and the normalized average is their unweighted mean.
Random baselines (`random_baselines`):
- MMLU direct and CoT: 25 (four options).
- BBH direct and CoT: the mean over the 27 tasks of each task's chance rate, where a task's chance
  rate is the mean over its examples of 1/#options; tasks with "(A)..." options use their option
  count, two-answer tasks (Yes/No, True/False, valid/invalid, yes/no) 1/2, and open-ended tasks
  (dyck_languages, multistep_arithmetic_two, object_counting, word_sorting) 0.
- TyDiQA (exact match) and MGSM (exact numeric answer): 0.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

from flan_jax.evaluation import benchmarks
from flan_jax.evaluation import extraction

MMLU_RANDOM = 25.0


def answer_key(example: benchmarks.Example, prediction: str) -> str:
  """The canonical answer a prediction gives (what is compared, and voted on in self-consistency)."""
  if example.kind == "number":
    value = extraction.extract_number(prediction, example.phrases)
    return "" if value is None else f"{value:g}"
  answer = extraction.extract_answer(prediction, example.phrases)
  if example.kind == "choice":
    letter = extraction.choice_letter(answer)
    return f"({letter})" if letter else extraction.normalize_text(answer)
  if example.kind == "span":
    return answer
  return extraction.normalize_text(answer)


def gold_key(example: benchmarks.Example) -> str:
  if example.kind == "number":
    return f"{extraction.parse_number(example.targets):g}"
  if example.kind == "choice":
    return f"({extraction.choice_letter(example.targets)})"
  if example.kind == "span":
    return example.targets
  return extraction.normalize_text(example.targets)


def majority_vote(answers: Sequence[str]) -> str:
  """The most frequent non-empty answer; ties go to the one that first reached the top count.

  Deterministic: ties are broken by the order of the samples (earliest answer wins), and empty
  answers (nothing extractable) only win when every sample is empty.
  """
  counts = collections.Counter(a for a in answers if a)
  if not counts:
    return ""
  top = max(counts.values())
  return next(a for a in answers if counts.get(a) == top)


@dataclasses.dataclass(frozen=True)
class ExampleResult:
  id: str
  benchmark: str
  task: str
  answer: str
  gold: str
  correct: float   # 1/0 (span: exact match)
  f1: float        # span F1; equals `correct` for other kinds
  predictions: tuple[str, ...]


def score_example(example: benchmarks.Example, predictions: Sequence[str]) -> ExampleResult:
  """Scores one example from one prediction, or several (self-consistency majority vote)."""
  answer = majority_vote([answer_key(example, p) for p in predictions])
  gold = gold_key(example)
  if example.kind == "span":
    golds = example.answers or (example.targets,)
    normalized = extraction.squad_normalize(answer)
    correct = float(any(normalized == extraction.squad_normalize(g) for g in golds))
    f1 = max(extraction.squad_f1(answer, g) for g in golds)
  else:
    correct = f1 = float(answer == gold and answer != "")
  return ExampleResult(example.id, example.benchmark, example.task, answer, gold, correct, f1,
                       tuple(predictions))


def scored_tasks(benchmark: str, tasks: Iterable[str]) -> list[str]:
  """Tasks that count toward the benchmark score (TyDiQA leaves English out)."""
  if benchmark == "tydiqa":
    return [t for t in tasks if t in benchmarks.SCORED_TYDIQA_LANGUAGES]
  return list(tasks)


def aggregate(results: Sequence[ExampleResult]) -> dict:
  """{'tasks': {benchmark: {task: {accuracy, f1?, count}}}, 'benchmarks': {benchmark: percent}}."""
  grouped: dict[str, dict[str, list[ExampleResult]]] = {}
  for r in results:
    grouped.setdefault(r.benchmark, {}).setdefault(r.task, []).append(r)
  tasks: dict[str, dict[str, dict]] = {}
  scores: dict[str, float] = {}
  for benchmark, by_task in grouped.items():
    tasks[benchmark] = {}
    for task, rows in sorted(by_task.items()):
      entry = {"accuracy": 100.0 * sum(r.correct for r in rows) / len(rows), "count": len(rows)}
      if benchmark == "tydiqa":
        entry["f1"] = 100.0 * sum(r.f1 for r in rows) / len(rows)
      tasks[benchmark][task] = entry
    counted = scored_tasks(benchmark, tasks[benchmark])
    if counted:
      scores[benchmark] = sum(tasks[benchmark][t]["accuracy"] for t in counted) / len(counted)
  return {"tasks": tasks, "benchmarks": scores}


def random_baselines(examples: Sequence[benchmarks.Example]) -> dict[str, float]:
  """Percent accuracy of random guessing per paper benchmark (see the module docstring)."""
  baselines = {"mmlu_direct": MMLU_RANDOM, "mmlu_cot": MMLU_RANDOM, "tydiqa": 0.0, "mgsm": 0.0}
  for name in ("bbh_direct", "bbh_cot"):
    by_task: dict[str, list[benchmarks.Example]] = {}
    for e in examples:
      if e.benchmark == name:
        by_task.setdefault(e.task, []).append(e)
    if by_task:
      baselines[name] = 100.0 * sum(benchmarks.chance_rate(v) for v in by_task.values()) / len(by_task)
  return baselines


def normalize(score: float, baseline: float) -> float:
  """Rescales a percent score so that random guessing is 0 and perfect is 100."""
  return 100.0 * (score - baseline) / (100.0 - baseline)


def normalized_average(scores: dict[str, float], baselines: dict[str, float]) -> float | None:
  """Mean of the six normalized paper scores; None unless all six are present."""
  if not all(name in scores and name in baselines for name in benchmarks.PAPER_SUITES):
    return None
  values = [normalize(scores[n], baselines[n]) for n in benchmarks.PAPER_SUITES]
  return sum(values) / len(values)


def evaluate(examples: Sequence[benchmarks.Example],
             predictions: dict[str, Sequence[str]]) -> tuple[list[ExampleResult], dict]:
  """Scores all examples (an example without predictions counts as wrong) and builds the summary.

  Summary: aggregate(...) plus 'random_baselines', 'normalized' (per paper benchmark),
  'normalized_average' (None unless the six paper scores are present) and 'missing' (count).
  """
  results = [score_example(e, predictions.get(e.id, ())) for e in examples]
  summary = aggregate(results)
  baselines = random_baselines(examples)
  summary["random_baselines"] = {k: v for k, v in baselines.items() if k in summary["benchmarks"]}
  summary["normalized"] = {k: normalize(v, baselines[k]) for k, v in summary["benchmarks"].items()
                           if k in baselines}
  summary["normalized_average"] = normalized_average(summary["benchmarks"], baselines)
  summary["missing"] = sum(1 for e in examples if not predictions.get(e.id))
  return results, summary
