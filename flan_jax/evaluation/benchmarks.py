"""Loaders for the paper's evaluation benchmarks, reading the upstream file layouts from a data dir.

Each loader returns `Example`s with the full prompt already built (few-shot exemplars included), so
the same prompts serve the SeqIO tasks (tasks/benchmarks.py), `--dump_prompts` and model evaluation.
Prompt protocols (the templates are ours):

- MMLU (`mmlu/data/{dev,test}/<subject>_{dev,test}.csv`): 5-shot from the subject's dev rows, test
  rows scored. Direct exemplars answer "A: (X)". The data layout carries no CoT rationales, so the
  CoT prompt keeps the same exemplars answered "A: The answer is (X)." and ends the query with
  "A: Let's think step by step." (the answer is read after the last "answer is").
- BBH (`bbh/bbh/<task>.json`, `bbh/cot-prompts/<task>.txt`): 3-shot from the published CoT prompt
  files; direct prompts use the same exemplars with the answer only.
- TyDiQA GoldP (`tydiqa/tydiqa-goldp-v1.1-dev.json`): 1-shot; the exemplar is the same language's
  question with the shortest passage (the next shortest for that question itself). All 9 languages
  load; English is excluded from the score (`SCORED_TYDIQA_LANGUAGES`).
- MGSM (`mgsm/mgsm_<lang>.tsv`, `mgsm/exemplars.json`): 8-shot CoT with the native-language
  exemplars, their own question/answer prefixes ("Frage:", "Schritt-für-Schritt-Antwort:").
- GSM8K (`gsm8k/{train,test}.jsonl`): 8-shot CoT from the first 8 train problems (calculator
  annotations removed, "The answer is N." appended); test scored.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

from flan_jax.evaluation import extraction

MMLU_SHOTS = 5
BBH_SHOTS = 3
MGSM_LANGUAGES = ("bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
GSM8K_SHOTS = 8
TYDIQA_FILE = "tydiqa/tydiqa-goldp-v1.1-dev.json"
TYDIQA_LANGUAGES = ("arabic", "bengali", "english", "finnish", "indonesian", "korean", "russian",
                    "swahili", "telugu")
SCORED_TYDIQA_LANGUAGES = ("arabic", "bengali", "finnish", "indonesian", "korean", "russian",
                           "swahili", "telugu")
SUITES = ("mmlu_direct", "mmlu_cot", "bbh_direct", "bbh_cot", "tydiqa", "mgsm", "gsm8k")
PAPER_SUITES = ("mmlu_direct", "mmlu_cot", "bbh_direct", "bbh_cot", "tydiqa", "mgsm")
COT_TRIGGER = "Let's think step by step."


@dataclasses.dataclass(frozen=True)
class Example:
  """One evaluation example.

  `kind` selects the comparison: 'choice' (letters), 'text' (case/space-insensitive exact match),
  'number' (numeric equality) or 'span' (SQuAD exact match / F1 against any of `answers`).
  `options` are the candidate targets for rank classification (choice and two-way tasks).
  """
  id: str
  benchmark: str
  task: str
  inputs: str
  targets: str
  kind: str
  answers: tuple[str, ...] = ()
  options: tuple[str, ...] = ()
  phrases: tuple[str, ...] = extraction.ANSWER_PHRASES

  def dump(self) -> dict[str, str]:
    return {"id": self.id, "benchmark": self.benchmark, "task": self.task, "inputs": self.inputs,
            "targets": self.targets}


class BenchmarkDataError(FileNotFoundError):
  """A benchmark file is missing or malformed under the data dir."""


def default_data_dir() -> Path | None:
  """../shared/data next to the repository (or the current directory) when present."""
  for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
    candidate = root.parent / "shared" / "data"
    if candidate.is_dir():
      return candidate
  return None


def _require(path: Path, what: str) -> Path:
  if not path.exists():
    raise BenchmarkDataError(f"{what} not found at {path}: pass --data_dir pointing at a folder with "
                             f"the upstream layout (see ../shared/data/README.md).")
  return path


# ----------------------------------------------------------------------------------------- MMLU

def mmlu_subjects(data_dir: Path) -> list[str]:
  test_dir = _require(Path(data_dir) / "mmlu" / "data" / "test", "MMLU test folder")
  return sorted(p.name[:-len("_test.csv")] for p in test_dir.glob("*_test.csv"))


def _mmlu_rows(path: Path) -> list[list[str]]:
  with _require(path, "MMLU file").open(newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  for i, row in enumerate(rows):
    if len(row) != 6 or row[5] not in "ABCD":
      raise BenchmarkDataError(f"{path}:{i + 1}: expected question,A,B,C,D,answer-letter; got {row!r}")
  return rows


def _mmlu_question(row: list[str]) -> str:
  options = "\n".join(f"({letter}) {text}" for letter, text in zip("ABCD", row[1:5]))
  return f"Q: {row[0]}\n{options}"


def load_mmlu(data_dir: Path, cot: bool) -> list[Example]:
  benchmark = "mmlu_cot" if cot else "mmlu_direct"
  examples = []
  for subject in mmlu_subjects(data_dir):
    base = Path(data_dir) / "mmlu" / "data"
    dev = _mmlu_rows(base / "dev" / f"{subject}_dev.csv")[:MMLU_SHOTS]
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}."
    shots = [f"{_mmlu_question(r)}\nA: " + (f"The answer is ({r[5]})." if cot else f"({r[5]})")
             for r in dev]
    prefix = "\n\n".join([header] + shots)
    query_suffix = f"A: {COT_TRIGGER}" if cot else "A:"
    for i, row in enumerate(_mmlu_rows(base / "test" / f"{subject}_test.csv")):
      examples.append(Example(
          id=f"{benchmark}/{subject}/{i}", benchmark=benchmark, task=subject,
          inputs=f"{prefix}\n\n{_mmlu_question(row)}\n{query_suffix}", targets=f"({row[5]})",
          kind="choice", options=("(A)", "(B)", "(C)", "(D)")))
  return examples


# ------------------------------------------------------------------------------------------ BBH

def bbh_tasks(data_dir: Path) -> list[str]:
  task_dir = _require(Path(data_dir) / "bbh" / "bbh", "BBH task folder")
  return sorted(p.stem for p in task_dir.glob("*.json"))


def parse_cot_prompt(text: str) -> tuple[str, list[tuple[str, str]]]:
  """(task description, [(question, chain of thought)]) from a published BBH cot-prompts file."""
  body = text.split("-----\n", 1)[-1].strip()
  blocks = re.split(r"\n\n(?=Q: )", body)
  description, shots = blocks[0].strip(), []
  for block in blocks[1:]:
    question, _, answer = block[len("Q: "):].partition("\nA: ")
    shots.append((question.strip(), answer.strip()))
  return description, shots


def _options_in(question: str) -> list[str]:
  return re.findall(r"^\(([A-Z])\) ", question, flags=re.MULTILINE)


def load_bbh(data_dir: Path, cot: bool) -> list[Example]:
  benchmark = "bbh_cot" if cot else "bbh_direct"
  examples = []
  for task in bbh_tasks(data_dir):
    prompt_path = _require(Path(data_dir) / "bbh" / "cot-prompts" / f"{task}.txt", "BBH CoT prompt")
    description, shots = parse_cot_prompt(prompt_path.read_text(encoding="utf-8"))
    if len(shots) != BBH_SHOTS:
      raise BenchmarkDataError(f"{prompt_path}: expected {BBH_SHOTS} exemplars, found {len(shots)}")
    rendered = [f"Q: {q}\nA: " + (a if cot else extraction.extract_answer(a)) for q, a in shots]
    prefix = "\n\n".join([description] + rendered)
    data = json.loads(_require(Path(data_dir) / "bbh" / "bbh" / f"{task}.json", "BBH task").read_text())
    targets = [e["target"] for e in data["examples"]]
    two_way = tuple(sorted(set(targets))) if len(set(targets)) == 2 else ()
    for i, example in enumerate(data["examples"]):
      letters = _options_in(example["input"])
      kind = bbh_kind(example["target"]) if letters else "text"
      examples.append(Example(
          id=f"{benchmark}/{task}/{i}", benchmark=benchmark, task=task,
          inputs=f"{prefix}\n\nQ: {example['input']}\nA:" + (f" {COT_TRIGGER}" if cot else ""),
          targets=example["target"], kind=kind,
          options=tuple(f"({x})" for x in letters) if kind == "choice" else two_way))
  return examples


def bbh_kind(target: str) -> str:
  """'choice' for a lettered target "(X)", else 'text' (a few BBH targets are option texts)."""
  return "choice" if re.fullmatch(r"\([A-Z]\)", target.strip()) else "text"


def chance_rate(examples: list[Example]) -> float:
  """Expected accuracy of uniform guessing: 1/#options per example, 0 for open-ended answers."""
  rates = [1.0 / len(e.options) if e.options else 0.0 for e in examples]
  return sum(rates) / len(rates) if rates else 0.0


# --------------------------------------------------------------------------------------- TyDiQA

def load_tydiqa(data_dir: Path) -> list[Example]:
  path = _require(Path(data_dir) / TYDIQA_FILE, "TyDiQA GoldP dev file")
  records = []  # (language, context, question, answers, id)
  for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
        records.append((qa["id"].split("-")[0], paragraph["context"], qa["question"], answers,
                        qa["id"]))
  by_language: dict[str, list] = {}
  for record in records:
    by_language.setdefault(record[0], []).append(record)
  examples = []
  for language in sorted(by_language):
    rows = by_language[language]
    shortest = sorted(rows, key=lambda r: (len(r[1]), r[4]))[:2]
    for i, (_, context, question, answers, qid) in enumerate(rows):
      shot = shortest[1] if shortest[0][4] == qid else shortest[0]
      prompt = ("Answer the question with a short span copied from the passage.\n\n"
                f"Passage: {shot[1]}\nQuestion: {shot[2]}\nAnswer: {shot[3][0]}\n\n"
                f"Passage: {context}\nQuestion: {question}\nAnswer:")
      examples.append(Example(id=f"tydiqa/{language}/{i}", benchmark="tydiqa", task=language,
                              inputs=prompt, targets=answers[0], kind="span", answers=answers))
  return examples


# ----------------------------------------------------------------------------------------- MGSM

def _split_prefix(text: str) -> tuple[str, str]:
  """("Frage:", "Roger hat ...") from "Frage: Roger hat ..." (ASCII or full-width colon)."""
  match = re.match(r"^([^:：]*[:：])\s*", text)
  if not match:
    raise BenchmarkDataError(f"MGSM exemplar without a 'Prefix:' label: {text[:40]!r}")
  return match.group(1), text[match.end():]


def mgsm_answer_phrase(exemplar_answer: str, number: int) -> str:
  """The language's "the answer is" phrase: the words before the number in the last sentence."""
  last = exemplar_answer.rstrip("。.।").rstrip()
  index = last.rfind(str(number))
  sentence = re.split(r"[.。।]\s*", last[:index])[-1] if index > 0 else ""
  sentence = re.split(r"=\s*\S+\s*", sentence)[-1]  # Thai writes "5 + 6 = 11 <phrase> 11"
  return sentence.strip(" —-")


def _mgsm_exemplars(data_dir: Path) -> dict:
  path = _require(Path(data_dir) / "mgsm" / "exemplars.json", "MGSM exemplars")
  return json.loads(path.read_text(encoding="utf-8"))


def mgsm_phrases(data_dir: Path, language: str) -> tuple[str, ...]:
  """Answer phrases for extraction: the language's own (from its exemplars), then English ones."""
  exemplars = _mgsm_exemplars(data_dir)
  phrase = mgsm_answer_phrase(exemplars["MGSM_EXEMPLARS"][language]["1"]["a"],
                              exemplars["EXEMPLAR_NUMBER_ANSWERS"][0])
  return tuple(p for p in (phrase,) if p) + extraction.ANSWER_PHRASES


def load_mgsm(data_dir: Path, languages: tuple[str, ...] = MGSM_LANGUAGES) -> list[Example]:
  exemplars = _mgsm_exemplars(data_dir)
  examples = []
  for language in languages:
    shots = [exemplars["MGSM_EXEMPLARS"][language][str(k)] for k in range(1, 9)]
    q_label, _ = _split_prefix(shots[0]["q"])
    a_label, _ = _split_prefix(shots[0]["a"])
    phrases = mgsm_phrases(data_dir, language)
    space = "" if q_label.endswith("：") else " "
    prefix = "\n\n".join(f"{s['q']}\n{s['a']}" for s in shots)
    path = _require(Path(data_dir) / "mgsm" / f"mgsm_{language}.tsv", "MGSM file")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
      question, _, answer = line.rpartition("\t")
      if not question or extraction.parse_number(answer) is None:
        raise BenchmarkDataError(f"{path}:{i + 1}: expected 'question<TAB>number'")
      examples.append(Example(
          id=f"mgsm/{language}/{i}", benchmark="mgsm", task=language,
          inputs=f"{prefix}\n\n{q_label}{space}{question}\n{a_label}", targets=answer.strip(),
          kind="number", phrases=phrases))
  return examples


# ---------------------------------------------------------------------------------------- GSM8K

def gsm8k_rationale(answer: str) -> tuple[str, str]:
  """(rationale without calculator annotations, final answer) from a GSM8K answer field."""
  rationale, _, final = answer.partition("####")
  rationale = re.sub(r"<<[^>]*>>", "", rationale)
  return " ".join(rationale.split()), final.strip().replace(",", "")


def load_gsm8k(data_dir: Path) -> list[Example]:
  def read(split: str) -> list[dict]:
    path = _require(Path(data_dir) / "gsm8k" / f"{split}.jsonl", f"GSM8K {split} file")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

  shots = []
  for row in read("train")[:GSM8K_SHOTS]:
    rationale, final = gsm8k_rationale(row["answer"])
    shots.append(f"Q: {row['question']}\nA: {rationale} The answer is {final}.")
  prefix = "\n\n".join(shots)
  return [Example(id=f"gsm8k/gsm8k/{i}", benchmark="gsm8k", task="gsm8k",
                  inputs=f"{prefix}\n\nQ: {row['question']}\nA:",
                  targets=gsm8k_rationale(row["answer"])[1], kind="number")
          for i, row in enumerate(read("test"))]


def load_suite(name: str, data_dir: Path | str | None) -> list[Example]:
  """All examples of a suite (one of SUITES, or 'paper' for the six normalized-average scores)."""
  if data_dir is None:
    data_dir = default_data_dir()
    if data_dir is None:
      raise BenchmarkDataError("no --data_dir given and ../shared/data not found: pass --data_dir.")
  data_dir = Path(data_dir)
  loaders = {"mmlu_direct": lambda: load_mmlu(data_dir, cot=False),
             "mmlu_cot": lambda: load_mmlu(data_dir, cot=True),
             "bbh_direct": lambda: load_bbh(data_dir, cot=False),
             "bbh_cot": lambda: load_bbh(data_dir, cot=True),
             "tydiqa": lambda: load_tydiqa(data_dir), "mgsm": lambda: load_mgsm(data_dir),
             "gsm8k": lambda: load_gsm8k(data_dir)}
  if name == "paper":
    return [e for suite in PAPER_SUITES for e in loaders[suite]()]
  if name not in loaders:
    raise ValueError(f"unknown suite '{name}': choose one of {', '.join(SUITES + ('paper',))}.")
  return loaders[name]()
