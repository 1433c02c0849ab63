r"""Evaluates on the paper's benchmarks (MMLU, BBH, TyDiQA, MGSM, GSM8K); scoring needs no model.

  # The prompts, one JSON line per example {"id","benchmark","task","inputs","targets"}:
  python -m flan_jax.eval --suite=mmlu_direct --data_dir=../shared/data --dump_prompts=/tmp/p.jsonl
  # Score predictions (lines {"id","prediction"}; several lines per id = self-consistency samples):
  python -m flan_jax.eval --suite=bbh_cot --predictions=/tmp/preds.jsonl --output_dir=/tmp/eval
  # Evaluate a model directory (flan_jax, T5X or Hugging Face via flan_jax.load):
  python -m flan_jax.eval --suite=paper --checkpoint=/path/to/model_dir --max_examples=20 \
      --output_dir=/tmp/eval [--num_samples=16 --temperature=0.7] [--rank_classification]

Suites: mmlu_direct, mmlu_cot, bbh_direct, bbh_cot, tydiqa, mgsm, gsm8k, paper (the six scores of
the normalized average). The report's last line is a JSON object of the scores. With --output_dir:
scores.json, tasks/<benchmark>/<task>.json, table.md (Table 5 layout), scores.png, predictions.jsonl.
Decoding defaults can also be set with gin: `--gin.generate_predictions.max_decode_length=128`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
from absl import flags

from flan_jax import gin_utils, partitioning
from flan_jax.evaluation import benchmarks
from flan_jax.evaluation import report
from flan_jax.evaluation import runner
from flan_jax.evaluation import scoring

# Flags that flan_jax.infer defines too (same names, types and defaults) may be redefined, so both
# entry modules can be imported into one process (tests, notebooks).
_SHARED = {"allow_override": True}
_SUITE = flags.DEFINE_enum("suite", "paper", list(benchmarks.SUITES) + ["paper"], "Benchmark suite.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with the upstream benchmark layouts "
                                "(default: ../shared/data when present).")
_DUMP = flags.DEFINE_string("dump_prompts", None, "Write the prompts of the suite to this JSONL file.")
_PREDICTIONS = flags.DEFINE_string("predictions", None, "Score the predictions in this JSONL file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory to evaluate.", **_SHARED)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write results (needed with "
                                  "--checkpoint; optional with --predictions).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Use at most this many examples per task.")
_RANK = flags.DEFINE_bool("rank_classification", False, "Multiple-choice and two-way examples: pick "
                          "the option the model scores highest instead of decoding.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Sampled chains per example for "
                                    "self-consistency (default 1 = greedy).", **_SHARED)
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature (self-consistency).",
                                  **_SHARED)
_TOPK = flags.DEFINE_integer("topk", None, "Top-k for sampling (self-consistency).", **_SHARED)
_MAX_DECODE = flags.DEFINE_integer("max_decode_length", None, "Longest output in tokens.", **_SHARED)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Prompts per device batch.", **_SHARED)
_MODEL_PARALLEL = flags.DEFINE_integer(
    "model_parallel", None, "Devices each parameter is split over, for models too big for one "
    "device.", **_SHARED)
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Row name in table.md (default: checkpoint name).")


class BenchmarkInputError(ValueError):
  """A command-line input (predictions file, checkpoint path) is wrong; the message says how."""


class PredictionsFileError(BenchmarkInputError):
  """The --predictions file is malformed or names examples that are not in the suite."""


def limit_per_task(examples: Sequence[benchmarks.Example],
                   max_examples: int | None) -> list[benchmarks.Example]:
  """The first `max_examples` examples of every (benchmark, task); all when None."""
  if max_examples is None:
    return list(examples)
  seen: dict[tuple[str, str], int] = {}
  kept = []
  for e in examples:
    key = (e.benchmark, e.task)
    if seen.get(key, 0) < max_examples:
      seen[key] = seen.get(key, 0) + 1
      kept.append(e)
  return kept


def dump_prompts(examples: Sequence[benchmarks.Example], path: Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for e in examples:
      f.write(json.dumps(e.dump(), ensure_ascii=False) + "\n")


def read_predictions(path: Path, known_ids: set[str], suite: str) -> dict[str, list[str]]:
  """{id: [prediction, ...]} in file order; one clear error for a bad line or an unknown id."""
  predictions: dict[str, list[str]] = {}
  with Path(path).open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        example_id, prediction = row["id"], row["prediction"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PredictionsFileError(f"{path}:{number}: expected a JSON object with 'id' and "
                                   f"'prediction' ({type(e).__name__}: {e}).") from None
      if example_id not in known_ids:
        raise PredictionsFileError(f"{path}:{number}: id '{example_id}' is not in suite '{suite}'; "
                                   f"pass the --suite the predictions were made for.")
      predictions.setdefault(example_id, []).append(str(prediction))
  return predictions


def model_predictions(model_path: str, examples: Sequence[benchmarks.Example], *,
                      rank: bool, decode_overrides: dict, model_parallel: int = 1
                      ) -> dict[str, list[str]]:
  """Loads the model (flan_jax.api.load) and predicts every example."""
  from flan_jax import api  # pylint: disable=import-outside-toplevel
  if not Path(model_path).exists():
    raise BenchmarkInputError(f"--checkpoint {model_path} does not exist: pass a model directory "
                              f"(flan_jax, T5X or Hugging Face).")
  model = api.load(model_path, model_parallel=model_parallel)
  predictions: dict[str, list[str]] = {}
  to_decode = list(examples)
  if rank:
    ranked = [e for e in examples if e.options]
    predictions.update(runner.rank_classification(
        model, ranked, **{k: v for k, v in decode_overrides.items() if k == "batch_size"}))
    to_decode = [e for e in examples if not e.options]
  if to_decode:
    predictions.update(runner.generate_predictions(model, to_decode, **decode_overrides))
  return predictions


def main() -> None:
  suite = _SUITE.value
  all_examples = benchmarks.load_suite(suite, _DATA_DIR.value)
  examples = limit_per_task(all_examples, _MAX_EXAMPLES.value)
  if _DUMP.value:
    dump_prompts(examples, Path(_DUMP.value))
    print(f"wrote {len(examples)} prompts to {_DUMP.value}")
  if _PREDICTIONS.value and _CHECKPOINT.value:
    raise SystemExit("error: pass either --predictions or --checkpoint, not both.")
  if _PREDICTIONS.value:
    predictions = read_predictions(Path(_PREDICTIONS.value), {e.id for e in all_examples}, suite)
    model_name = _MODEL_NAME.value or Path(_PREDICTIONS.value).stem
  elif _CHECKPOINT.value:
    if not _OUTPUT_DIR.value:
      raise SystemExit("error: --checkpoint needs --output_dir for the results.")
    overrides = {name: flag.value for name, flag in (
        ("num_samples", _NUM_SAMPLES), ("temperature", _TEMPERATURE), ("topk", _TOPK),
        ("max_decode_length", _MAX_DECODE), ("batch_size", _BATCH_SIZE)) if flag.value is not None}
    partitioning.initialize_distributed()
    predictions = model_predictions(_CHECKPOINT.value, examples, rank=_RANK.value,
                                    decode_overrides=overrides,
                                    model_parallel=_MODEL_PARALLEL.value or 1)
    if jax.process_index() > 0:
      return  # every host computed the same predictions; host 0 reports them
    model_name = _MODEL_NAME.value or Path(_CHECKPOINT.value).name
  elif _DUMP.value:
    return
  else:
    raise SystemExit("error: nothing to do: pass --dump_prompts, --predictions or --checkpoint.")
  results, summary = scoring.evaluate(examples, predictions)
  if _OUTPUT_DIR.value:
    report.write_outputs(Path(_OUTPUT_DIR.value), results, summary, model_name)
  print(report.text_report(summary))
  if _OUTPUT_DIR.value:
    print(report.markdown_table(summary, model_name))
  print(report.scores_line(summary))


def _main_with_errors() -> None:
  try:
    main()
  except (benchmarks.BenchmarkDataError, BenchmarkInputError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  gin_utils.run(_main_with_errors)
