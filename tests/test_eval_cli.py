"""`python -m flan_jax.eval` end to end: the README commands (dump, score, checkpoint) on a tiny random
T5 with the real T5 vocabulary, plus rank classification and sampling through the runner."""
import json
import os
import re
import subprocess
import sys

import pytest

from flan_jax import api, eval as eval_cli
from flan_jax.evaluation import benchmarks, runner, scoring
from conftest import require_shared_data


@pytest.fixture(scope="module")
def model_dir(tiny_t5_model_dir):
  return tiny_t5_model_dir


def _readme_commands(repo_root):
  section = (repo_root / "README.md").read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
  return [line for line in block.splitlines() if line.startswith("python -m flan_jax.eval")]


def _run(command, env, repo_root):
  command = command.replace("python ", f"{sys.executable} ", 1)
  result = subprocess.run(command, shell=True, cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_readme_commands(repo_root, model_dir, tmp_path):
  require_shared_data("mgsm")
  dump, score, checkpoint = _readme_commands(repo_root)
  env = dict(os.environ, EVAL_DIR=str(tmp_path), MODEL_DIR=str(model_dir))

  _run(dump, env, repo_root)
  prompts = [json.loads(l) for l in (tmp_path / "prompts.jsonl").read_text().splitlines()]
  assert len(prompts) == 2500 and set(prompts[0]) == {"id", "benchmark", "task", "inputs", "targets"}

  # Three samples per id: self-consistency. German gets a wrong majority, every other language a right one.
  with (tmp_path / "predictions.jsonl").open("w") as f:
    for p in prompts:
      wrong, right = "The answer is 1234567.", f"2 + 2 = 4. The answer is {p['targets']}."
      samples = [wrong, wrong, right] if p["task"] == "de" else [wrong, right, right]
      f.writelines(json.dumps({"id": p["id"], "prediction": s}) + "\n" for s in samples)
  out = _run(score, env, repo_root)
  assert json.loads(out.strip().splitlines()[-1]) == {"mgsm": pytest.approx(90.0)}
  scored = json.loads((tmp_path / "scored" / "scores.json").read_text())
  assert scored["tasks"]["mgsm"]["de"]["accuracy"] == 0.0
  assert (tmp_path / "scored" / "scores.png").read_bytes()[:4] == b"\x89PNG"

  out = _run(checkpoint, env, repo_root)
  scores = json.loads(out.strip().splitlines()[-1])
  assert set(scores) == {"mgsm"} and 0.0 <= scores["mgsm"] <= 100.0
  results = tmp_path / "model"
  saved = [json.loads(l) for l in (results / "predictions.jsonl").read_text().splitlines()]
  assert len(saved) == 10 and all(len(r["predictions"]) == 1 for r in saved)
  assert json.loads((results / "tasks" / "mgsm" / "ja.json").read_text())["count"] == 1
  assert "| Model | MMLU Direct | MMLU CoT | BBH Direct | BBH CoT | TyDiQA Direct | MGSM CoT |" in (
      results / "table.md").read_text()

  # Parameters split over 2 devices (mesh data=4 × model=2) predict the same.
  _run(checkpoint.replace("$EVAL_DIR/model", "$EVAL_DIR/split") + " --model_parallel=2", env, repo_root)
  assert (tmp_path / "split" / "predictions.jsonl").read_text() == (
      results / "predictions.jsonl").read_text()


def test_unknown_prediction_id_is_one_clear_error(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"id": "mmlu_direct/anatomy/0", "prediction": "A"}) + "\n")
  with pytest.raises(eval_cli.PredictionsFileError, match="not in suite 'mgsm'"):
    eval_cli.read_predictions(path, {"mgsm/de/0"}, "mgsm")
  path.write_text("{not json\n")
  with pytest.raises(eval_cli.PredictionsFileError, match=":1: expected a JSON object"):
    eval_cli.read_predictions(path, {"mgsm/de/0"}, "mgsm")


def test_limit_per_task():
  examples = [benchmarks.Example(f"b/{t}/{i}", "b", t, "", "x", "text") for t in "ab" for i in range(3)]
  assert [e.id for e in eval_cli.limit_per_task(examples, 2)] == ["b/a/0", "b/a/1", "b/b/0", "b/b/1"]


@pytest.fixture(scope="module")
def loaded(model_dir):
  return api.load(model_dir, batch_size=8)


SHORT = [benchmarks.Example("t/a/0", "t", "a", "Is the sky blue?\nA:", "Yes", "text", options=("No", "Yes")),
         benchmarks.Example("t/a/1", "t", "a", "Pick one: (A) red (B) blue (C) green\nA:", "(B)",
                            "choice", options=("(A)", "(B)", "(C)")),
         benchmarks.Example("t/b/0", "t", "b", "2 + 2 =", "4", "number")]


def test_rank_classification_picks_the_most_likely_option(loaded):
  with_options = SHORT[:2]
  chosen = runner.rank_classification(loaded, with_options)
  pairs = [(e, o) for e in with_options for o in e.options]
  scores = loaded.score([e.inputs for e, _ in pairs], [o for _, o in pairs])
  assert chosen == {"t/a/0": [("No", "Yes")[scores[1] > scores[0]]],
                    "t/a/1": [("(A)", "(B)", "(C)")[max(range(3), key=lambda i: scores[2 + i])]]}
  results, _ = scoring.evaluate(with_options, chosen)
  assert all(r.answer for r in results)  # an option always extracts to an answer


def test_sampled_chains_for_self_consistency(loaded):
  predictions = runner.generate_predictions(loaded, SHORT, num_samples=3, max_decode_length=8)
  assert sorted(predictions) == sorted(e.id for e in SHORT)
  assert all(len(v) == 3 and all(isinstance(s, str) for s in v) for v in predictions.values())
  assert predictions == runner.generate_predictions(loaded, SHORT, num_samples=3, max_decode_length=8)
