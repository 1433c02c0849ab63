"""Reading final answers out of model outputs, and the text normalizations used to compare them.

Chain-of-thought outputs end in a phrase such as "So the answer is (B)."; the answer is the text after
the *last* such phrase (models often restate intermediate "answers"). Direct outputs are the answer
itself. Multiple-choice answers reduce to their letter, so "(B)", "B", "B." and "(B) 12/25/1937"
all match a gold "(B)". Math answers reduce to a number ("$1,234.00 dollars" -> 1234).
"""
from __future__ import annotations

import re
import string
from collections.abc import Sequence

# English phrasings first; MGSM adds each language's own phrase (taken from its exemplars).
ANSWER_PHRASES: tuple[str, ...] = ("the answer is", "answer is", "the answer:", "answer:")

_CHOICE = re.compile(r"^\(?([A-Z])\)?(?=$|[\s.,:;)])")
_LOWER_CHOICE = re.compile(r"^\(?([a-z])\)?$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def after_answer_phrase(text: str, phrases: Sequence[str] = ANSWER_PHRASES) -> str | None:
  """Text after the last occurrence of any phrase (case-insensitive); None if none occurs."""
  lowered = text.lower()
  best, best_end = -1, -1
  for phrase in phrases:
    index = lowered.rfind(phrase.lower())
    if index > best:
      best, best_end = index, index + len(phrase)
  return None if best < 0 else text[best_end:]


def clean_answer(text: str) -> str:
  """First line, surrounding space, quotes, colons and final sentence punctuation removed."""
  text = text.strip().lstrip(":：").strip()
  text = text.splitlines()[0] if text else ""
  text = text.strip().strip("\"'`*")
  while text and text[-1] in ".。!！?？,;":
    text = text[:-1].rstrip()
  return text.strip("\"'`*").strip()


def extract_answer(text: str, phrases: Sequence[str] = ANSWER_PHRASES) -> str:
  """The final answer in a model output: after the last answer phrase if any, else the whole text."""
  tail = after_answer_phrase(text, phrases)
  return clean_answer(text if tail is None else tail)


def choice_letter(text: str) -> str | None:
  """'B' for "(B)", "B", "B.", "(B) some option text", "b"; None when the text does not start with one.

  A lower-case letter counts only on its own ("b", "(b)"): "a dog" is not option A.
  """
  match = _CHOICE.match(text.strip()) or _LOWER_CHOICE.match(text.strip())
  return match.group(1).upper() if match else None


def parse_number(text: str) -> float | None:
  """The value of a number string such as "1,234", "-5", "3.50" (any script's digits); None if not one."""
  try:
    return float(text.replace(",", ""))
  except ValueError:
    return None


def extract_number(text: str, phrases: Sequence[str] = ANSWER_PHRASES) -> float | None:
  """The numeric answer: the first number after the last answer phrase, else the last number."""
  tail = after_answer_phrase(text, phrases)
  if tail is not None:
    numbers = _NUMBER.findall(tail)
    if numbers:
      return parse_number(numbers[0].rstrip(","))
  numbers = _NUMBER.findall(text)
  return parse_number(numbers[-1].rstrip(",")) if numbers else None


def normalize_text(text: str) -> str:
  """Case- and whitespace-insensitive form for exact match of free-form answers."""
  return " ".join(text.lower().split())


def squad_normalize(text: str) -> str:
  """SQuAD normalization: lower case, no punctuation, no English articles, single spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
  """Token-overlap F1 of the SQuAD-normalized strings (0..1)."""
  pred_tokens, gold_tokens = squad_normalize(prediction).split(), squad_normalize(gold).split()
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)
  remaining = list(gold_tokens)
  common = 0
  for token in pred_tokens:
    if token in remaining:
      remaining.remove(token)
      common += 1
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)
