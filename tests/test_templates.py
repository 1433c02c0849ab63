"""Template families, options rendering, CoT and inversion, on real rows from ../shared/data."""
import itertools
import json
import random

import pytest
from conftest import require_shared_data

from flan_jax.data import templates as tpl

T = tpl.Template

QA = tpl.TemplateFamily(
    "qa",
    (T("{question}\n\n{options}", "{answer}"),
     T("Answer this question: {question} {options}", "{answer}"),
     T("Q: {question}\n{options}\nA:", "{answer}")),
    tpl.cot_templates_with_triggers(["{question}", "Question: {question}", "Solve: {question}"]),
)


def read_cot_rows(name: str, limit: int = 50) -> list[dict]:
  """Rows of a flan_cot TSV (question, answer, rationale; newlines stored as literal \\n)."""
  path = require_shared_data("flan_cot", f"{name}_train.tsv")
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in itertools.islice(f, limit):
      question, answer, rationale = line.rstrip("\n").split("\t")
      rows.append({"question": question.replace("\\n", "\n"), "answer": answer,
                   "rationale": rationale.replace("\\n", "\n")})
  return rows


def split_options(row: dict) -> dict:
  """ECQA-style rows keep their options inside the question: move them to an options list."""
  question, _, block = row["question"].partition("\nOptions:\n")
  options = [line[2:] for line in block.split("\n") if line.startswith("- ")]
  return dict(row, question=question, options=options)


def test_deterministic_options_layout():
  rendered = tpl.render_options(["red", "green", "blue"], "green")
  assert rendered.text == "Options:\n- red\n- green\n- blue"
  assert rendered.target == "green"


def test_randomized_options_rewrite_target_to_unique_markers():
  options = ["red", "green", "blue"]
  layouts, kinds = set(), set()
  for seed in range(200):
    rendered = tpl.render_options(options, "green", random.Random(seed))
    assert rendered == tpl.render_options(options, "green", random.Random(seed))  # seeded
    layouts.add(rendered.text)
    lines = rendered.text
    if "(B)" in lines or "B." in lines or "B)" in lines:
      kinds.add("letter")
      assert rendered.target in ("(B)", "B")
    elif "(ii)" in lines.lower() or "II." in lines:
      kinds.add("roman")
      assert rendered.target in ("(II)", "II")
    elif "(2)" in lines or "2." in lines:
      kinds.add("number")
      assert rendered.target in ("(2)", "2")
    else:
      kinds.add("bullet")
      assert rendered.target == "green"  # bullets are not unique: the answer text stays
    assert all(option in rendered.text for option in options)
  assert kinds == {"letter", "roman", "number", "bullet"}
  assert len(layouts) > 30


def test_answer_not_among_options_keeps_text_target():
  rendered = tpl.render_options(["a", "b"], "c", random.Random(5))
  assert rendered.target == "c"


def test_variants_share_patterns_and_noopt_drops_options():
  assert QA.variant(tpl.ZS_OPT) == QA.variant(tpl.FS_OPT)
  noopt = QA.variant(tpl.ZS_NOOPT)
  assert noopt[0] == T("{question}", "{answer}")
  assert noopt[1] == T("Answer this question: {question}", "{answer}")
  assert noopt[2] == T("Q: {question}\nA:", "{answer}")
  assert len(QA.variant(tpl.ZS_COT)) == 3


def test_unsupported_types_raise_one_clear_error():
  plain = tpl.TemplateFamily("plain", (T("{question}", "{answer}"),))
  with pytest.raises(ValueError, match="no 'zs_opt' templates"):
    plain.variant(tpl.ZS_OPT)
  with pytest.raises(ValueError, match="no 'zs_cot' templates: add cot_templates"):
    plain.variant(tpl.ZS_COT)
  with pytest.raises(ValueError, match="Unknown template type 'zero_shot'"):
    plain.variant("zero_shot")
  with pytest.raises(KeyError, match="field 'question'.*it has: answer"):
    tpl.render(T("{question}", "{answer}"), {"answer": "x"}, template_type=tpl.ZS_NOOPT)
  with pytest.raises(ValueError, match="needs an 'options' field"):
    tpl.render(QA.templates[0], {"question": "q", "answer": "a"}, template_type=tpl.ZS_OPT)


def test_cot_on_gsm8k_rows():
  rows = read_cot_rows("gsm8k")
  triggers = set()
  for i, row in enumerate(rows):
    template = QA.variant(tpl.ZS_COT)[i % 3]
    out = tpl.render(template, row, template_type=tpl.ZS_COT)
    assert out.inputs.startswith(("Question: ", "Solve: ", row["question"][:20]))
    trigger = next(t for t in tpl.COT_TRIGGERS if out.inputs.endswith(t))
    triggers.add(trigger)
    assert out.targets.startswith(row["rationale"])
    assert tpl.extract_answer(out.targets) == row["answer"]
  assert len(triggers) == 3


def test_options_on_ecqa_rows_both_modes():
  rows = [split_options(r) for r in read_cot_rows("ecqa")]
  assert all(len(r["options"]) == 5 and r["answer"] in r["options"] for r in rows)
  rewritten = 0
  for i, row in enumerate(rows):
    fixed = tpl.render(QA.templates[0], row, template_type=tpl.ZS_OPT)
    assert fixed.inputs == row["question"] + "\n\nOptions:\n" + "\n".join(
        f"- {o}" for o in row["options"])
    assert fixed.targets == row["answer"]
    randomized = tpl.render(QA.templates[0], row, template_type=tpl.ZS_OPT,
                            rng=random.Random(i))
    if randomized.targets != row["answer"]:
      rewritten += 1
      # The marker target labels the gold option's line.
      marker = randomized.targets
      assert any(f"{marker}{sep}{row['answer']}" in randomized.inputs for sep in (" ", ". ", ") "))
  assert 10 < rewritten < len(rows)


def test_input_inversion_on_strategyqa_rows():
  family = tpl.inversion_family("strategyqa_ii")
  rows = read_cot_rows("strategyqa", limit=20)
  for i, row in enumerate(rows):
    out = tpl.render(family.variant(tpl.ZS_NOOPT)[i % 10], row, template_type=tpl.ZS_NOOPT)
    assert row["question"] in out.targets
    assert row["answer"] in out.inputs
    assert row["question"] not in out.inputs


def test_niv2_definition_and_instances():
  path = require_shared_data("niv2_sample", "tasks", "task648_answer_generation.json")
  task = json.loads(path.read_text(encoding="utf-8"))
  family = tpl.TemplateFamily("niv2", (
      T("{definition}\n\nInput: {input}\nOutput:", "{answer}"),
      T("Task: {definition}\n{input}", "{answer}"),
  ))
  for i, instance in enumerate(task["Instances"][:10]):
    example = {"definition": task["Definition"][0], "input": instance["input"],
               "answer": instance["output"][0]}
    out = tpl.render(family.variant(tpl.ZS_NOOPT)[i % 2], example, template_type=tpl.ZS_NOOPT)
    assert task["Definition"][0] in out.inputs and instance["input"] in out.inputs
    assert out.targets == instance["output"][0]


@pytest.mark.parametrize("text,answer", [
    ("3 + 4 = 7. So the answer is 7.", "7"),
    ("The answer is (B).", "(B)"),
    ("First answer is 2, then the final answer is: yes", "yes"),
    ("no", "no"),
])
def test_extract_answer(text, answer):
  assert tpl.extract_answer(text) == answer
