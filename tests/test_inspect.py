"""The inspector CLI, and the commands and code of the README's Flan 2022 data section."""
import json
import re
import shlex

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
