"""Writing evaluation results: per-task JSON, a Table-5-style markdown table, a bar chart, predictions.

Table layout follows Table 5 of Chung et al. (2022): one row per model, columns MMLU Direct / CoT,
BBH Direct / CoT, TyDiQA Direct, MGSM CoT and the normalized average (plus GSM8K when evaluated).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from flan_jax.evaluation import scoring

COLUMNS = (("mmlu_direct", "MMLU Direct"), ("mmlu_cot", "MMLU CoT"), ("bbh_direct", "BBH Direct"),
           ("bbh_cot", "BBH CoT"), ("tydiqa", "TyDiQA Direct"), ("mgsm", "MGSM CoT"),
           ("gsm8k", "GSM8K CoT"))


def _cell(value: float | None) -> str:
  return "–" if value is None else f"{value:.1f}"


def markdown_table(summary: dict, model_name: str) -> str:
  """The benchmark scores (percent) as a markdown table; '–' where a benchmark was not run."""
  scores = summary["benchmarks"]
  shown = [(key, title) for key, title in COLUMNS if key in scores or key != "gsm8k"]
  header = ["Model"] + [title for _, title in shown] + ["Norm. avg."]
  row = [model_name] + [_cell(scores.get(key)) for key, _ in shown]
  row.append(_cell(summary.get("normalized_average")))
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"]
  baselines = summary.get("random_baselines", {})
  if baselines:
    lines.append("")
    lines.append("Random baselines (%): " + ", ".join(f"{k} {v:.1f}" for k, v in baselines.items()))
  return "\n".join(lines) + "\n"


def text_report(summary: dict) -> str:
  """Human-readable per-task lines then per-benchmark lines; the caller prints the JSON last."""
  lines = []
  for benchmark, tasks in summary["tasks"].items():
    for task, entry in tasks.items():
      extra = f"  f1 {entry['f1']:.1f}" if "f1" in entry else ""
      lines.append(f"{benchmark:12s} {task:42s} n={entry['count']:5d}  acc {entry['accuracy']:.1f}{extra}")
  for benchmark, score in summary["benchmarks"].items():
    norm = summary["normalized"].get(benchmark)
    norm_text = "" if norm is None else f"  (normalized {norm:.1f})"
    lines.append(f"{benchmark}: {score:.1f}{norm_text}")
  if summary.get("normalized_average") is not None:
    lines.append(f"normalized average: {summary['normalized_average']:.1f}")
  if summary.get("missing"):
    lines.append(f"warning: {summary['missing']} examples had no prediction and count as wrong")
  return "\n".join(lines)


def scores_line(summary: dict) -> str:
  """The last line of the report: one JSON object of the benchmark scores."""
  out = dict(summary["benchmarks"])
  if summary.get("normalized_average") is not None:
    out["normalized_average"] = summary["normalized_average"]
  return json.dumps(out, sort_keys=True)


def bar_chart(summary: dict, path: Path, model_name: str) -> None:
  """A PNG bar chart of the benchmark scores (matplotlib, Agg backend)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  keys = [(k, t) for k, t in COLUMNS if k in summary["benchmarks"]]
  values = [summary["benchmarks"][k] for k, _ in keys]
  titles = [t for _, t in keys]
  if summary.get("normalized_average") is not None:
    titles.append("Norm. avg.")
    values.append(summary["normalized_average"])
  fig, ax = plt.subplots(figsize=(1.2 * len(titles) + 2, 4))
  ax.bar(range(len(titles)), values, color="#4477aa")
  ax.set_xticks(range(len(titles)), titles, rotation=30, ha="right")
  ax.set_ylabel("score (%)")
  ax.set_title(model_name)
  ax.set_ylim(min(0.0, *values) if values else 0.0, 100.0)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(output_dir: Path, results: Sequence[scoring.ExampleResult], summary: dict,
                  model_name: str) -> None:
  """Writes scores.json, tasks/<benchmark>/<task>.json, table.md, scores.png, predictions.jsonl."""
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "scores.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  for benchmark, tasks in summary["tasks"].items():
    folder = output_dir / "tasks" / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    for task, entry in tasks.items():
      (folder / f"{task}.json").write_text(json.dumps(entry, indent=2, sort_keys=True))
  (output_dir / "table.md").write_text(markdown_table(summary, model_name))
  bar_chart(summary, output_dir / "scores.png", model_name)
  with (output_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
    for r in results:
      f.write(json.dumps({"id": r.id, "answer": r.answer, "gold": r.gold, "correct": r.correct,
                          "predictions": list(r.predictions)}, ensure_ascii=False) + "\n")
