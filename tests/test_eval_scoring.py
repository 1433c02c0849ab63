"""Benchmark loaders on ../shared/data, answer extraction, scoring, self-consistency, normalized average."""
import collections
import csv
import json

import pytest

from flan_jax.evaluation import benchmarks, extraction, scoring
from conftest import require_shared_data


@pytest.fixture(scope="module")
def data_dir():
  return require_shared_data()


@pytest.fixture(scope="module")
def suites(data_dir):
  return {name: benchmarks.load_suite(name, data_dir) for name in benchmarks.SUITES}


def _by_task(examples):
  grouped = collections.defaultdict(list)
  for e in examples:
    grouped[e.task].append(e)
  return grouped


def test_benchmarks_load_completely(suites):
  counts = {name: len(examples) for name, examples in suites.items()}
  assert counts == {"mmlu_direct": 14042, "mmlu_cot": 14042, "bbh_direct": 6511, "bbh_cot": 6511,
                    "tydiqa": 5077, "mgsm": 2500, "gsm8k": 1319}
  assert len(_by_task(suites["mmlu_direct"])) == 57
  assert len(_by_task(suites["bbh_cot"])) == 27
  tydiqa = {k: len(v) for k, v in _by_task(suites["tydiqa"]).items()}
  assert sorted(tydiqa) == sorted(benchmarks.TYDIQA_LANGUAGES) and tydiqa["english"] == 440
  assert {k: len(v) for k, v in _by_task(suites["mgsm"]).items()} == {
      lang: 250 for lang in benchmarks.MGSM_LANGUAGES}
  ids = [e.id for examples in suites.values() for e in examples]
  assert len(ids) == len(set(ids))


def test_prompts_follow_the_protocols(suites):
  mmlu = suites["mmlu_direct"][0]
  assert mmlu.inputs.count("\nA: (") == benchmarks.MMLU_SHOTS and mmlu.inputs.endswith("\nA:")
  assert suites["mmlu_cot"][0].inputs.endswith("A: Let's think step by step.")
  bbh_cot, bbh_direct = suites["bbh_cot"][0], suites["bbh_direct"][0]
  assert bbh_cot.inputs.count("\nQ: ") == benchmarks.BBH_SHOTS + 1
  assert bbh_cot.inputs.count("So the answer is") == benchmarks.BBH_SHOTS
  assert "So the answer is" not in bbh_direct.inputs and bbh_direct.inputs.endswith("\nA:")
  german = _by_task(suites["mgsm"])["de"][0]
  assert german.inputs.count("Frage:") == 9 and german.inputs.endswith("Schritt-für-Schritt-Antwort:")
  assert german.phrases[0] == "Die Antwort ist"
  assert _by_task(suites["mgsm"])["zh"][0].phrases[0] == "答案是"
  tydiqa = suites["tydiqa"][0]
  assert tydiqa.inputs.count("Passage: ") == 2 and tydiqa.inputs.endswith("Answer:")
  assert all(e.inputs.count("Answer: ") == 1 for e in suites["tydiqa"][:50])  # never the query itself
  gsm = suites["gsm8k"][0]
  assert gsm.inputs.count("The answer is") == benchmarks.GSM8K_SHOTS and "<<" not in gsm.inputs


def _oracle(example, cot):
  if not cot:
    return example.targets
  if example.kind == "number":  # distracting numbers before the answer phrase
    return f"First 3 + 4 = 7, then 99 - 1 = 98. {example.phrases[0]} {example.targets}."
  return f"Step one, step (Z). So the answer is {example.targets}."


@pytest.mark.parametrize("suite,cot", [("mmlu_direct", False), ("mmlu_cot", True),
                                       ("bbh_direct", False), ("bbh_cot", True), ("tydiqa", False),
                                       ("mgsm", True), ("gsm8k", True)])
def test_oracle_scores_100(suites, suite, cot):
  examples = suites[suite]
  _, summary = scoring.evaluate(examples, {e.id: [_oracle(e, cot)] for e in examples})
  assert summary["benchmarks"] == {suite: pytest.approx(100.0)}
  assert summary["missing"] == 0


def test_gsm8k_gold_chain_of_thought_scores_100(suites, data_dir):
  rows = [json.loads(l) for l in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()]
  chains = [row["answer"].replace("####", "The answer is") for row in rows]
  _, summary = scoring.evaluate(suites["gsm8k"], {e.id: [c] for e, c in zip(suites["gsm8k"], chains)})
  assert summary["benchmarks"]["gsm8k"] == pytest.approx(100.0)


def test_constant_predictor_scores_the_majority_rate(suites, data_dir):
  # MMLU: always "(A)"; the expected rate is read from the CSVs here, independently of the loader.
  rates = []
  for path in sorted((data_dir / "mmlu" / "data" / "test").glob("*_test.csv")):
    with path.open(newline="", encoding="utf-8") as f:
      letters = [row[5] for row in csv.reader(f)]
    rates.append(100.0 * letters.count("A") / len(letters))
  _, summary = scoring.evaluate(suites["mmlu_direct"], {e.id: ["A"] for e in suites["mmlu_direct"]})
  assert summary["benchmarks"]["mmlu_direct"] == pytest.approx(sum(rates) / len(rates))
  # BBH: each task's most common target, predicted for every example of the task.
  majority, rates = {}, []
  for path in sorted((data_dir / "bbh" / "bbh").glob("*.json")):
    targets = [e["target"] for e in json.loads(path.read_text())["examples"]]
    value, count = collections.Counter(targets).most_common(1)[0]
    majority[path.stem] = value
    rates.append(100.0 * count / len(targets))
  examples = suites["bbh_cot"]
  _, summary = scoring.evaluate(
      examples, {e.id: [f"So the answer is {majority[e.task]}."] for e in examples})
  assert summary["benchmarks"]["bbh_cot"] == pytest.approx(sum(rates) / len(rates))


def test_bbh_random_baseline(suites):
  by_task = _by_task(suites["bbh_direct"])
  assert benchmarks.chance_rate(by_task["boolean_expressions"]) == 0.5
  assert benchmarks.chance_rate(by_task["word_sorting"]) == 0.0
  assert benchmarks.chance_rate(by_task["logical_deduction_five_objects"]) == pytest.approx(0.2)
  baseline = scoring.random_baselines(suites["bbh_direct"])["bbh_direct"]
  expected = 100.0 * sum(benchmarks.chance_rate(v) for v in by_task.values()) / 27
  assert baseline == pytest.approx(expected) and 20.0 < baseline < 35.0


def test_normalized_average_by_hand():
  scores = {"mmlu_direct": 50.0, "mmlu_cot": 40.0, "bbh_direct": 30.0, "bbh_cot": 35.0,
            "tydiqa": 20.0, "mgsm": 10.0}
  baselines = {"mmlu_direct": 25.0, "mmlu_cot": 25.0, "bbh_direct": 20.0, "bbh_cot": 20.0,
               "tydiqa": 0.0, "mgsm": 0.0}
  # (50-25)/75 = 33.33, (40-25)/75 = 20, (30-20)/80 = 12.5, (35-20)/80 = 18.75, 20, 10
  expected = (100 / 3 + 20 + 12.5 + 18.75 + 20 + 10) / 6
  assert scoring.normalized_average(scores, baselines) == pytest.approx(expected)
  assert scoring.normalize(25.0, 25.0) == 0.0 and scoring.normalize(100.0, 25.0) == 100.0
  del scores["mgsm"]
  assert scoring.normalized_average(scores, baselines) is None


def test_tydiqa_excludes_english_and_reports_f1(suites):
  examples = suites["tydiqa"]
  # Right everywhere but English, which must not change the score.
  preds = {e.id: [e.targets if e.task != "english" else "wrong"] for e in examples}
  _, summary = scoring.evaluate(examples, preds)
  assert summary["benchmarks"]["tydiqa"] == pytest.approx(100.0)
  assert summary["tasks"]["tydiqa"]["english"]["accuracy"] == 0.0
  assert summary["tasks"]["tydiqa"]["arabic"]["f1"] == pytest.approx(100.0)


@pytest.mark.parametrize("text,expected", [
    ("Let's see. The answer is (B).", "(B)"),
    ("So the answer is 12. Wait, the answer is (C)", "(C)"),
    ("(D) 12/14/1937", "(D)"),
    ("B", "(B)"),
    ("the answer is: b.", "(B)"),
    ("I think so. So the answer is Yes.", "yes"),
    ("\"valid\"", "valid"),
    ("answer is ] } ]", "] } ]"),
])
def test_choice_and_text_extraction(text, expected):
  choice = benchmarks.Example("x", "bbh_cot", "t", "", "(A)", "choice")
  textual = benchmarks.Example("x", "bbh_cot", "t", "", "No", "text")
  example = choice if expected.startswith("(") else textual
  assert scoring.answer_key(example, text) == expected


def test_lower_case_letters_count_only_alone():
  assert extraction.choice_letter("b") == extraction.choice_letter("(b)") == "B"
  assert extraction.choice_letter("a dog") is None


@pytest.mark.parametrize("text,expected", [
    ("She pays 2 * 3 = 6 dollars. The answer is $1,234.", 1234.0),
    ("3 + 4 = 7. So 18", 18.0),
    ("The answer is 18 dollars. Check: 18 - 2 = 16", 18.0),
    ("The answer is -5.", -5.0),
    ("It costs 3.50 in total", 3.5),
    ("no digits at all", None),
])
def test_number_extraction(text, expected):
  assert extraction.extract_number(text) == expected


def test_squad_normalization_and_f1():
  assert extraction.squad_normalize("The  Eiffel Tower!") == "eiffel tower"
  assert extraction.squad_f1("the Eiffel tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
  assert extraction.squad_f1("", "x") == 0.0


def test_self_consistency_majority_vote_and_ties():
  example = benchmarks.Example("x", "mgsm", "de", "", "11", "number",
                               phrases=("Die Antwort ist",) + extraction.ANSWER_PHRASES)
  chains = ["Die Antwort ist 12.", "5 + 6 = 11. Die Antwort ist 11.", "Die Antwort ist 11.", "??"]
  assert scoring.score_example(example, chains).correct == 1.0
  # A 1-1 tie goes to the earliest answer; empty extractions never win over a real answer.
  assert scoring.majority_vote(["7", "8", "8", "7"]) == "7"
  assert scoring.majority_vote(["", "", "9"]) == "9"
  assert scoring.majority_vote(["", ""]) == ""
  assert scoring.score_example(example, ["Die Antwort ist 12.", "Die Antwort ist 11."]).correct == 0.0
  assert scoring.score_example(example, []).correct == 0.0


def test_seqio_tasks_use_the_same_prompts_and_metrics(suites):
  from flan_jax.tasks import benchmarks as benchmark_tasks  # pylint: disable=import-outside-toplevel
  import seqio  # pylint: disable=import-outside-toplevel
  assert len(benchmark_tasks.BENCHMARK_TASKS) == 2 * 57 + 2 * 27 + 9 + 10 + 1
  task = seqio.get_mixture_or_task("tydiqa_korean")
  rows = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  expected = _by_task(suites["tydiqa"])["korean"]
  assert [r["inputs_pretokenized"].decode() for r in rows] == [e.inputs for e in expected]
  assert rows[0]["_task_name"] == b"tydiqa_korean" and rows[0]["_template_type"] == b"fs_noopt"
  golds = [task.postprocess_fn(r["targets_pretokenized"].decode(), example=r, is_target=True)
           for r in rows]
  assert [g for g in golds] == [e.answers for e in expected]
  metric = task.metric_fns[0]
  assert metric(golds, [g[-1] for g in golds]) == {"accuracy": 100.0, "f1": 100.0}
  bbh = seqio.get_mixture_or_task("bbh_cot_ruin_names")
  targets = [(e.targets,) for e in _by_task(suites["bbh_cot"])["ruin_names"]]
  assert bbh.metric_fns[0](targets, [f"So the answer is {t[0]}." for t in targets]) == {"accuracy": 100.0}
