"""The inspector CLI, and the commands and code of the README's Flan 2022 data section."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, require_shared_data
from flan_jax.data import inspect


@pytest.fixture(scope="module", autouse=True)
def data():
  require_shared_data("flan_cot", "flan_collection_info.csv")


def _run(capsys, *args):
  code = inspect.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


def test_counts_json(capsys):
  code, out, _ = _run(capsys, "--counts", "--json")
  result = json.loads(out)
  assert code == 0
  assert result["collections"] == {"flan2021": 72, "dialog": 3, "t0": 193, "niv2": 818, "cot": 9}
  assert result["total"] == 1095 and result["paper"]["total"] == 1836
  assert len(result["excluded"]["program_synthesis"]) == 5


def test_rates_json_sums_to_one(capsys):
  code, out, _ = _run(capsys, "cot_submix", "--rates", "--json")
  shares = json.loads(out)
  assert code == 0 and len(shares) == 36  # 9 datasets × (zs_cot, fs_cot, ii zs, ii fs)
  assert sum(shares.values()) == pytest.approx(1.0)


def test_examples_per_template_type(capsys):
  code, out, _ = _run(capsys, "cot_gsm8k", "-n", "2", "--json")
  rows = json.loads(out)
  assert code == 0
  assert [(r["_template_type"], r["_template_idx"]) for r in rows] == [
      ("zs_cot", 0), ("zs_cot", 1), ("fs_cot", 0), ("fs_cot", 1)]
  assert rows[0]["targets"].endswith("So the answer is 72.")
  assert all(r["num_input_tokens"] > 0 and r["_task_source"] == "cot" for r in rows)


def test_unknown_name_suggests_close_names(capsys):
  code, _, err = _run(capsys, "cot_gsm8")
  assert code == 2
  assert re.search(r"error: Unknown task or mixture 'cot_gsm8'\. Did you mean: .*cot_gsm8k_", err)


def _readme_section():
  text = (REPO_ROOT / "README.md").read_text()
  return text[text.index("## Data: the Flan 2022 collection"):]


def test_readme_commands_run(capsys, tmp_path):
  section = _readme_section()
  commands = [line.split("#")[0].strip() for line in section.splitlines()
              if line.startswith("python -m flan_jax.data.inspect")]
  assert len(commands) == 4
  for command in commands:
    args = shlex.split(command)[3:]
    args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    code, out, err = _run(capsys, *args)
    assert code == 0, (command, err)
    assert out.strip()
  png = tmp_path / "cot_rates.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_user_task_snippet(tmp_path, monkeypatch):
  section = _readme_section()
  code = section.split("```python\n")[1].split("```")[0]
  assert len(code.strip().splitlines()) <= 15
  monkeypatch.chdir(tmp_path)
  (tmp_path / "my_qa.jsonl").write_text(
      json.dumps({"question": "Is 4 even?", "answer": "yes", "options": ["yes", "no"]}) + "\n")
  exec(code, {})  # pylint: disable=exec-used
  from flan_jax.data import registry  # pylint: disable=g-import-not-at-top
  task = registry.get_mixture_or_task("my_qa_zs_opt")
  (row,) = list(task.get_dataset({"inputs": 64, "targets": 8}, split="train",
                                 shuffle=False).as_numpy_iterator())
  assert row["inputs_pretokenized"] == b"Is 4 even?\nOptions:\n- yes\n- no"
  assert row["targets_pretokenized"] == b"yes"


def test_counts_name_each_task_list_and_the_paper_gap(capsys):
  _, out, _ = _run(capsys, "--counts", "--json")
  by_collection = json.loads(out)["by_collection"]
  assert {c: (r["registered"], r["paper"]) for c, r in by_collection.items()} == {
      "flan2021": (72, 72), "dialog": (3, 3), "t0": (193, 193), "niv2": (818, 1554), "cot": (9, 9)}
  assert by_collection["niv2"]["gap"] == 736
  assert by_collection["niv2"]["collection_info_csv"] == 1556  # the Flan release's NIv2 task list
  assert "niv2_sample: 3 task files" in by_collection["niv2"]["task_list_source"]
  assert "57 MMLU-derived removed" in by_collection["niv2"]["task_list_source"]
  assert by_collection["t0"]["task_list_source"].startswith("the 193 T0 rows (P3 subsets)")
  _, table, _ = _run(capsys, "--counts")
  assert re.search(r"niv2 +818 +1554 +736 ", table)


def _niv2_task(i, name):
  return {"Definition": [f"Task {i}: repeat the word."],
          "Positive Examples": [{"input": w, "output": w} for w in ("cat", "dog", "owl", "bee")],
          "Instances": [{"id": f"{name}-{k}", "input": f"w{k}", "output": [f"w{k}"]}
                        for k in range(20)]}


def test_full_niv2_checkout_registers_every_task_file(tmp_path):
  """A generated natural-instructions checkout: 150 task files (3 MMLU-derived), split lists that
  also name tasks without files, read by a fresh process as a user would."""
  names = [f"task{i:04d}_{'mmmlu_answer_generation' if i % 50 == 7 else 'gen'}_{i}"
           for i in range(150)]
  (tmp_path / "tasks").mkdir()
  for i, name in enumerate(names):
    (tmp_path / "tasks" / f"{name}.json").write_text(json.dumps(_niv2_task(i, name)))
  (tmp_path / "tasks" / "README.md").write_text("not a task")
  splits = tmp_path / "splits" / "default"
  splits.mkdir(parents=True)
  (splits / "train_tasks.txt").write_text("\n".join(names[:20] + ["task9001_listed_only"]))
  (splits / "test_tasks.txt").write_text("task9002_listed_only\n")
  (splits / "excluded_tasks.txt").write_text("task9003_excluded\n" + names[1] + "\n")
  script = ("import json; from flan_jax.data import inspect; inspect.main(['--counts', '--json']); "
            "inspect.main(['niv2_task0012_gen_12', '--json'])")
  env = {**os.environ, "FLAN_JAX_NIV2_DIR": str(tmp_path)}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
  decoder = json.JSONDecoder()
  counts, end = decoder.raw_decode(result.stdout)
  examples = decoder.raw_decode(result.stdout[end:].lstrip())[0]
  niv2 = counts["by_collection"]["niv2"]
  assert niv2["registered"] == 150 - 3 + 3  # files - MMLU-derived + names only in the lists
  assert niv2["task_list_source"].startswith(f"{tmp_path}: 150 task files in tasks/ ∪ 23 names")
  assert "3 MMLU-derived removed" in niv2["task_list_source"]
  assert [e["_template_type"] for e in examples] == ["zs_noopt", "fs_noopt"]
  assert all("Task 12: repeat the word." in e["inputs"] for e in examples)
  assert examples[0]["targets"] == "w0"  # the fs exemplars are the task's Positive Examples
  assert any(f"{w}\n" in examples[1]["inputs"] for w in ("cat", "dog", "owl", "bee"))
