"""Procedurally generated instruction data for the demo mixture, with our own template families.

Seven families of canonical examples (see `templates.py` for the schema), each with ~10 templates:

| family       | question                                   | answer            | chance            |
| ------------ | ------------------------------------------ | ----------------- | ----------------- |
| `compare`    | is the first of two numbers larger         | yes / no          | 56%               |
| `sentiment`  | is a short generated review positive       | positive/negative | 53%               |
| `parity`     | is a number even                           | yes / no          | 54%               |
| `boolean`    | value of an and/or/not expression          | True / False      | 55%               |
| `sort`       | sort 3-5 numbers ascending                 | "3, 17, 42"       | 1%                |
| `count`      | how often a letter occurs in a string      | a count           | 49%               |
| `arithmetic` | two-step word problem, worked rationale    | a number          | 6%                |

Chance is the accuracy of always giving the most common answer of the 200-example validation split
(random guessing on the two-way tasks gives 50%). Generation is deterministic for a seed. Validation
is disjoint from train: an example belongs to validation exactly when a stable hash of its question
fields falls in bucket 0 of 10, and each split keeps only its own bucket(s).
"""
from __future__ import annotations

import dataclasses
import random
import zlib
from typing import Any, Callable, Iterator

from flan_jax.data import templates as tpl

T = tpl.Template
Example = dict[str, Any]
VALIDATION_BUCKETS = 10


@dataclasses.dataclass(frozen=True)
class DemoFamily:
  """A generator of canonical examples, its templates, and the template types its task rotates."""
  name: str
  make: Callable[[random.Random], Example]
  key_fields: tuple[str, ...]
  family: tpl.TemplateFamily
  template_types: tuple[str, ...]
  chance: float  # accuracy of always giving the most common answer of the validation split


def in_split(example: Example, key_fields: tuple[str, ...], split: str) -> bool:
  """Whether `example` belongs to `split` ("train" or "validation"); the two never overlap."""
  key = "\x1f".join(str(example[f]) for f in key_fields)
  is_validation = zlib.crc32(key.encode("utf-8")) % VALIDATION_BUCKETS == 0
  return is_validation == (split == "validation")


def generate(demo: DemoFamily, split: str, seed: int = 0) -> Iterator[Example]:
  """Endless deterministic stream of `split` examples of one family."""
  if split not in ("train", "validation"):
    raise ValueError(f"Unknown demo split '{split}': use 'train' or 'validation'.")
  rng = random.Random(f"{seed}:{demo.name}:{split}")
  while True:
    example = demo.make(rng)
    if in_split(example, demo.key_fields, split):
      yield example


# ----------------------------------------------------------------------------- compare

def _make_compare(rng: random.Random) -> Example:
  a, b = rng.sample(range(10, 100), 2)
  return {"first": str(a), "second": str(b), "options": ["yes", "no"],
          "answer": "yes" if a > b else "no"}


COMPARE = tpl.TemplateFamily("demo_compare", (
    T("Is {first} larger than {second}?\n{options}", "{answer}"),
    T("Is {first} bigger than {second}?\n{options}", "{answer}"),
    T("{first} > {second}: true?\n{options}", "{answer}"),
    T("Question: is the number {first} greater than {second}?\n{options}", "{answer}"),
    T("Compare {first} with {second}. Is the first one more?\n{options}", "{answer}"),
    T("Would {first} come after {second} when counting up?\n{options}", "{answer}"),
    T("Here are two numbers: {first}, {second}. Is the first the larger one?\n{options}",
      "{answer}"),
    T("Tell me whether {first} exceeds {second}.\n{options}", "{answer}"),
    T("Is it true that {first} is more than {second}?\n{options}", "{answer}"),
    T("If you had {first} coins and a friend had {second}, would you have more?\n{options}",
      "{answer}"),
))

# ----------------------------------------------------------------------------- sentiment

_THINGS = ("food", "service", "room", "movie", "book", "concert", "hotel", "phone", "game", "trip",
           "coffee", "staff", "view", "music", "price")
_POSITIVE = ("great", "wonderful", "excellent", "lovely", "fantastic", "delightful", "superb",
             "pleasant", "amazing", "charming")
_NEGATIVE = ("awful", "terrible", "boring", "rude", "disappointing", "dreadful", "poor", "bland",
             "horrible", "annoying")
_NEUTRAL = ("We went there on a Tuesday.", "It was my second visit.", "I came with two friends.",
            "We stayed for about an hour.", "It was a rainy day.", "")


def _make_sentiment(rng: random.Random) -> Example:
  positive = rng.random() < 0.5
  adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
  intensifier = rng.choice(("", "really ", "quite ", "truly "))
  review = f"The {rng.choice(_THINGS)} was {intensifier}{adjective}. {rng.choice(_NEUTRAL)}".strip()
  return {"review": review, "options": ["positive", "negative"],
          "answer": "positive" if positive else "negative"}


SENTIMENT = tpl.TemplateFamily("demo_sentiment", (
    T("Review: {review}\nIs this review positive or negative?\n{options}", "{answer}"),
    T("{review}\nWhat is the sentiment of this review?\n{options}", "{answer}"),
    T("Did the writer like it? \"{review}\"\n{options}", "{answer}"),
    T("Classify the tone of the following text.\n{review}\n{options}", "{answer}"),
    T("How does the customer feel? {review}\n{options}", "{answer}"),
    T("Read the review and tell me if it is positive or negative: {review}\n{options}",
      "{answer}"),
    T("\"{review}\" Was this a good or a bad experience?\n{options}", "{answer}"),
    T("Sentiment analysis.\nText: {review}\n{options}", "{answer}"),
    T("Is the opinion in this sentence favorable? {review}\n{options}", "{answer}"),
    T("Someone wrote: {review}\nWhat is their overall opinion?\n{options}", "{answer}"),
))

# ----------------------------------------------------------------------------- parity


def _make_parity(rng: random.Random) -> Example:
  n = rng.randrange(10000)
  return {"number": str(n), "options": ["yes", "no"], "answer": "yes" if n % 2 == 0 else "no"}


PARITY = tpl.TemplateFamily("demo_parity", (
    T("Is {number} an even number?\n{options}", "{answer}"),
    T("Is {number} even?\n{options}", "{answer}"),
    T("Can {number} be divided by 2 with no remainder?\n{options}", "{answer}"),
    T("Question: is the number {number} even?\n{options}", "{answer}"),
    T("{number}: even or not?\n{options}", "{answer}"),
    T("Tell me if {number} is divisible by two.\n{options}", "{answer}"),
    T("Is it true that {number} is even?\n{options}", "{answer}"),
    T("Number: {number}\nIs this number even?\n{options}", "{answer}"),
    T("Would splitting {number} marbles between two friends leave none over?\n{options}",
      "{answer}"),
    T("Decide whether {number} is an even integer.\n{options}", "{answer}"),
))

# ----------------------------------------------------------------------------- boolean


def _boolean_expression(rng: random.Random, operands: int) -> str:
  if operands == 1:
    value = rng.choice(["True", "False"])
    return f"not {value}" if rng.random() < 0.3 else value
  left = rng.randint(1, operands - 1)
  op = rng.choice(["and", "or"])
  left_text = _boolean_expression(rng, left)
  right_text = _boolean_expression(rng, operands - left)
  text = f"{left_text} {op} {right_text}"
  return f"( {text} )" if rng.random() < 0.4 else text


def _make_boolean(rng: random.Random) -> Example:
  wanted = rng.random() < 0.5  # drawn first so True and False are equally likely answers
  while True:
    expression = _boolean_expression(rng, rng.randint(2, 4))
    # Built above from the literals True/False, and/or/not and parentheses only.
    value = bool(eval(expression, {"__builtins__": {}}, {}))  # pylint: disable=eval-used
    if value == wanted:
      return {"expression": expression, "options": ["True", "False"], "answer": str(value)}


BOOLEAN = tpl.TemplateFamily("demo_boolean", (
    T("Evaluate: {expression}\n{options}", "{answer}"),
    T("What is the value of the boolean expression {expression}?\n{options}", "{answer}"),
    T("{expression} is\n{options}", "{answer}"),
    T("Compute the truth value of: {expression}\n{options}", "{answer}"),
    T("Is the following expression true or false? {expression}\n{options}", "{answer}"),
    T("Logic question. {expression} evaluates to what?\n{options}", "{answer}"),
    T("Simplify {expression} to a single value.\n{options}", "{answer}"),
    T("Expression: {expression}\nResult?\n{options}", "{answer}"),
    T("Work out whether {expression} holds.\n{options}", "{answer}"),
    T("Given Python's rules for and, or and not, what does {expression} give?\n{options}",
      "{answer}"),
))

# ----------------------------------------------------------------------------- sort


def _make_sort(rng: random.Random) -> Example:
  numbers = rng.sample(range(100), rng.randint(3, 5))
  return {"numbers": ", ".join(map(str, numbers)),
          "answer": ", ".join(map(str, sorted(numbers)))}


SORT = tpl.TemplateFamily("demo_sort", (
    T("Sort these numbers from smallest to largest: {numbers}", "{answer}"),
    T("Put in ascending order: {numbers}", "{answer}"),
    T("Arrange {numbers} in increasing order.", "{answer}"),
    T("Numbers: {numbers}\nSorted (low to high):", "{answer}"),
    T("Order the list {numbers} from least to greatest.", "{answer}"),
    T("Can you sort {numbers} for me? Smallest first.", "{answer}"),
    T("Rewrite the list in ascending order.\n{numbers}", "{answer}"),
    T("Sort ascending: {numbers}", "{answer}"),
    T("Here is a list of numbers: {numbers}. List them from the lowest to the highest.",
      "{answer}"),
    T("Rank {numbers} from smallest to biggest.", "{answer}"),
))

# ----------------------------------------------------------------------------- count

_COUNT_LETTERS = "abcde"


def _make_count(rng: random.Random) -> Example:
  word = "".join(rng.choice(_COUNT_LETTERS) for _ in range(rng.randint(4, 8)))
  letter = rng.choice(_COUNT_LETTERS)
  return {"word": word, "letter": letter, "answer": str(word.count(letter))}


COUNT = tpl.TemplateFamily("demo_count", (
    T("How many times does the letter {letter} appear in {word}?", "{answer}"),
    T("Count the {letter}'s in {word}.", "{answer}"),
    T("In the string {word}, how many {letter} are there?", "{answer}"),
    T("Word: {word}\nLetter: {letter}\nCount:", "{answer}"),
    T("How often do you see {letter} in {word}?", "{answer}"),
    T("Tell me the number of occurrences of {letter} in {word}.", "{answer}"),
    T("{word} contains the letter {letter} how many times?", "{answer}"),
    T("Count how many letters in {word} are {letter}.", "{answer}"),
    T("Look at {word}. How many of its letters are {letter}?", "{answer}"),
    T("Number of {letter} characters in {word}?", "{answer}"),
))

# ----------------------------------------------------------------------------- arithmetic (CoT)

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "cards", "pencils", "shells")


def _make_arithmetic(rng: random.Random) -> Example:
  name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
  start, gained = rng.randint(2, 30), rng.randint(2, 30)
  lost = rng.randint(1, start + gained - 1)
  middle, end = start + gained, start + gained - lost
  question = (f"{name} has {start} {items}. {name} gets {gained} more and then gives away {lost}. "
              f"How many {items} does {name} have now?")
  rationale = (f"{name} starts with {start} {items}. After getting {gained} more, {name} has "
               f"{start} + {gained} = {middle}. After giving away {lost}, {name} has "
               f"{middle} - {lost} = {end}.")
  return {"question": question, "rationale": rationale, "answer": str(end)}


_ARITHMETIC_QUESTIONS = (
    "{question}",
    "Question: {question}",
    "Solve this word problem. {question}",
    "{question} Give the final number.",
    "Math problem: {question}",
    "Here is a story problem.\n{question}",
    "Answer the question. {question}",
    "Problem: {question}",
    "Try this one: {question}",
    "Work out the answer. {question}",
)
ARITHMETIC = tpl.TemplateFamily(
    "demo_arithmetic",
    tuple(T(q, "{answer}") for q in _ARITHMETIC_QUESTIONS),
    tpl.cot_templates_with_triggers(_ARITHMETIC_QUESTIONS),
)

# ----------------------------------------------------------------------------- the families

FAMILIES: dict[str, DemoFamily] = {d.name: d for d in (
    DemoFamily("compare", _make_compare, ("first", "second"), COMPARE,
               (tpl.ZS_OPT, tpl.ZS_NOOPT, tpl.FS_OPT), 0.56),
    DemoFamily("sentiment", _make_sentiment, ("review",), SENTIMENT,
               (tpl.ZS_OPT, tpl.ZS_NOOPT, tpl.FS_OPT), 0.53),
    DemoFamily("parity", _make_parity, ("number",), PARITY,
               (tpl.ZS_OPT, tpl.ZS_NOOPT, tpl.FS_NOOPT), 0.54),
    DemoFamily("boolean", _make_boolean, ("expression",), BOOLEAN,
               (tpl.ZS_OPT, tpl.ZS_NOOPT, tpl.FS_OPT), 0.55),
    DemoFamily("sort", _make_sort, ("numbers",), SORT, (tpl.ZS_NOOPT, tpl.FS_NOOPT), 0.01),
    DemoFamily("count", _make_count, ("word", "letter"), COUNT, (tpl.ZS_NOOPT, tpl.FS_NOOPT), 0.49),
    DemoFamily("arithmetic", _make_arithmetic, ("question",), ARITHMETIC,
               (tpl.ZS_COT, tpl.ZS_NOOPT), 0.06),
)}
