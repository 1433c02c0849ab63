"""Instruction templates: families of (input pattern, target pattern) pairs and their rendering.

An example to be rendered is a plain dict of fields (the *canonical example*):

* any string fields a family's patterns name, e.g. `question`, `premise`, `context`;
* `answer` (str): the gold answer, always present;
* `options` (list[str], optional): answer choices, for families whose patterns use `{options}`;
* `rationale` (str, optional): a worked explanation, for chain-of-thought families.

Patterns are `str.format` strings over those fields. `{options}` is replaced by a rendered options
block (`render_options`); an example's own `options` list is never formatted directly. One pattern
list per family serves every variant:

* `zs_opt` / `fs_opt` render `{options}`;
* `zs_noopt` / `fs_noopt` drop `{options}` together with the whitespace in front of it;
* `zs_cot` / `fs_cot` use the family's CoT patterns: the input ends with a reasoning trigger and the
  target is the rationale followed by an answer suffix ("So the answer is X.");
* input inversion is a family of its own (`TemplateFamily` built with `inversion=True` patterns that
  ask for the question given the answer); it renders with the plain types.

Few-shot assembly (exemplars, delimiters, token budgets) lives in `formatting.py`.
"""
from __future__ import annotations

import dataclasses
import random
import re
import string
from typing import Any, Mapping, Optional, Sequence

ZS_OPT = "zs_opt"
ZS_NOOPT = "zs_noopt"
FS_OPT = "fs_opt"
FS_NOOPT = "fs_noopt"
ZS_COT = "zs_cot"
FS_COT = "fs_cot"
TEMPLATE_TYPES = (ZS_OPT, ZS_NOOPT, FS_OPT, FS_NOOPT, ZS_COT, FS_COT)
FEW_SHOT_TYPES = frozenset({FS_OPT, FS_NOOPT, FS_COT})
OPTION_TYPES = frozenset({ZS_OPT, FS_OPT})
COT_TYPES = frozenset({ZS_COT, FS_COT})

# Matches `{options}` plus any whitespace/newlines right before it, so noopt variants leave no gap.
_OPTIONS_SLOT = re.compile(r"\s*\{options\}")


@dataclasses.dataclass(frozen=True)
class Template:
  """One (input pattern, target pattern) pair of `str.format` strings."""
  inputs: str
  targets: str

  def without_options(self) -> "Template":
    return Template(_OPTIONS_SLOT.sub("", self.inputs), _OPTIONS_SLOT.sub("", self.targets))


@dataclasses.dataclass(frozen=True)
class TemplateFamily:
  """About ten templates for one kind of task, written by hand.

  Attributes:
    name: identifier, e.g. "nli" or "demo_compare".
    templates: direct-answer patterns. Patterns that mention `{options}` serve both the opt and the
      noopt variants; a family without options uses patterns with no `{options}` slot.
    cot_templates: chain-of-thought patterns (may be empty). Targets should contain `{rationale}`
      and `{answer}`; `cot_templates_with_triggers` builds such patterns from questions, triggers
      and suffixes.
  """
  name: str
  templates: tuple[Template, ...]
  cot_templates: tuple[Template, ...] = ()

  def __post_init__(self):
    if not self.templates and not self.cot_templates:
      raise ValueError(f"Template family '{self.name}' has no templates: give at least one.")

  def has_options(self) -> bool:
    return any("{options}" in t.inputs for t in self.templates)

  def supports(self, template_type: str) -> bool:
    if template_type in COT_TYPES:
      return bool(self.cot_templates)
    if template_type in OPTION_TYPES:
      return self.has_options()
    return template_type in TEMPLATE_TYPES and bool(self.templates)

  def variant(self, template_type: str) -> tuple[Template, ...]:
    """The templates used for `template_type` (one of `TEMPLATE_TYPES`)."""
    if template_type not in TEMPLATE_TYPES:
      raise ValueError(
          f"Unknown template type '{template_type}': use one of {', '.join(TEMPLATE_TYPES)}.")
    if not self.supports(template_type):
      raise ValueError(
          f"Template family '{self.name}' has no '{template_type}' templates: "
          + ("add cot_templates." if template_type in COT_TYPES
             else "add patterns with an {options} slot."))
    if template_type in COT_TYPES:
      return self.cot_templates
    if template_type in OPTION_TYPES:
      return self.templates
    return tuple(t.without_options() for t in self.templates)


# ----------------------------------------------------------------------------- options rendering

@dataclasses.dataclass(frozen=True)
class MarkerStyle:
  """How options are itemized. `line` formats the marker label; `target` (if set) the new target."""
  kind: str  # "bullet", "letter", "number", "roman"
  line: str
  target: Optional[str] = None

  def label(self, index: int) -> str:
    if self.kind == "bullet":
      return ""
    if self.kind == "letter":
      return string.ascii_uppercase[index]
    if self.kind == "number":
      return str(index + 1)
    return _roman(index + 1)

  def unique(self) -> bool:
    return self.kind != "bullet"


def _roman(number: int) -> str:
  numerals = [(10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
  out = ""
  for value, symbol in numerals:
    while number >= value:
      out += symbol
      number -= value
  return out


DETERMINISTIC_HEADER = "Options:"
DETERMINISTIC_MARKER = MarkerStyle("bullet", "- {}")
OPTION_HEADERS = (
    "Options:", "Choose from:", "Pick one:", "Possible answers:", "Select from the following.",
    "Available choices:", "Answer choices:", "Choices:", "Which one is it?", "Pick your answer:",
)
OPTION_MARKERS = (
    MarkerStyle("bullet", "- {}"),
    MarkerStyle("bullet", "* {}"),
    MarkerStyle("bullet", "\u2022 {}"),
    MarkerStyle("letter", "({label}) {}", "({label})"),
    MarkerStyle("letter", "{label}. {}", "{label}"),
    MarkerStyle("letter", "{label}) {}", "{label}"),
    MarkerStyle("number", "{label}. {}", "{label}"),
    MarkerStyle("number", "({label}) {}", "({label})"),
    MarkerStyle("roman", "{label}. {}", "{label}"),
    MarkerStyle("roman", "({label}) {}", "({label})"),
)
OPTION_LINE_ENDINGS = ("\n", "\n", " ", "; ", "\n\n")


@dataclasses.dataclass(frozen=True)
class RenderedOptions:
  """An options block and the target to use with it (rewritten to a marker when markers are unique)."""
  text: str
  target: str


def render_options(options: Sequence[str], answer: str,
                   rng: Optional[random.Random] = None) -> RenderedOptions:
  """Renders an options block: a header line plus one line per option.

  Without `rng` the layout is fixed ("Options:" and "- " bullets, one per line) and the target stays
  the answer text. With `rng` the header, the item markers and the line ending are drawn per call;
  when the drawn markers are unique (letters, numbers, roman numerals) and `answer` is one of the
  options, the target becomes the answer's marker, e.g. "(B)".
  """
  options = [str(o) for o in options]
  if not options:
    raise ValueError("render_options needs at least one option; use a noopt template instead.")
  if rng is None:
    header, marker, ending = DETERMINISTIC_HEADER, DETERMINISTIC_MARKER, "\n"
  else:
    header = rng.choice(OPTION_HEADERS)
    marker = rng.choice(OPTION_MARKERS)
    ending = rng.choice(OPTION_LINE_ENDINGS)
  lines = [marker.line.format(option, label=marker.label(i)) for i, option in enumerate(options)]
  text = ending.join([header] + lines)
  target = answer
  if rng is not None and marker.unique() and answer in options:
    target = marker.target.format(label=marker.label(options.index(answer)))
  return RenderedOptions(text, target)


# ----------------------------------------------------------------------------- rendering

@dataclasses.dataclass(frozen=True)
class Rendered:
  inputs: str
  targets: str


class _Fields(dict):
  """`format_map` mapping that names the missing field and the template in its error."""

  def __init__(self, values: Mapping[str, Any], where: str):
    super().__init__(values)
    self.where = where

  def __missing__(self, key: str):
    raise KeyError(
        f"{self.where} refers to field '{key}', which the example lacks (it has: "
        f"{', '.join(sorted(self))}). Map the source's columns to '{key}' or pick another family.")


def render(template: Template, example: Mapping[str, Any], *, template_type: str,
           rng: Optional[random.Random] = None, where: str = "template") -> Rendered:
  """Fills one template with one canonical example.

  Args:
    template: the pattern pair, already taken from `family.variant(template_type)`.
    example: canonical example (see module docstring).
    template_type: decides whether `{options}` is rendered and whether the target is rewritten.
    rng: when given, options are rendered in a randomized layout drawn from it.
    where: names the template in error messages.
  """
  fields = {k: v for k, v in example.items() if k != "options"}
  answer = str(example["answer"]) if "answer" in example else ""
  if template_type in OPTION_TYPES:
    options = example.get("options")
    if options is None or len(options) == 0:
      raise ValueError(f"{where}: template type '{template_type}' needs an 'options' field with "
                       "at least one choice; use a noopt type for examples without options.")
    block = render_options(options, answer, rng)
    fields["options"] = block.text
    fields["answer"] = block.target
  else:
    fields["options"] = ""
  values = _Fields(fields, where)
  return Rendered(template.inputs.format_map(values).strip(),
                  template.targets.format_map(values).strip())


# ----------------------------------------------------------------------------- chain of thought

COT_TRIGGERS = (
    "Let's think step by step.",
    "Let's work this out step by step.",
    "Think it through carefully before answering.",
    "Explain your reasoning, then give the answer.",
    "Reason step by step, then answer.",
    "Let's solve this one step at a time.",
    "Show your work first.",
    "Walk through the reasoning before answering.",
    "First think, then answer.",
    "Give a short explanation, then the answer.",
)
ANSWER_SUFFIXES = (
    "So the answer is {answer}.",
    "The answer is {answer}.",
    "Therefore, the answer is {answer}.",
    "Thus, the answer is {answer}.",
    "So, the final answer is {answer}.",
)


def cot_templates_with_triggers(question_patterns: Sequence[str]) -> tuple[Template, ...]:
  """CoT templates: each question pattern gets a trigger and an answer-suffix target, in rotation.

  The i-th question pattern is paired with trigger i and suffix i (modulo their counts), so one list
  of plain question patterns yields varied CoT templates deterministically.
  """
  out = []
  for i, question in enumerate(question_patterns):
    trigger = COT_TRIGGERS[i % len(COT_TRIGGERS)]
    suffix = ANSWER_SUFFIXES[i % len(ANSWER_SUFFIXES)]
    separator = "\n" if i % 2 == 0 else " "
    out.append(Template(f"{question}{separator}{trigger}", "{rationale} " + suffix))
  return tuple(out)


_ANSWER_IS = re.compile(r"answer is[:\s]*", re.IGNORECASE)


def extract_answer(text: str) -> str:
  """The final answer of a chain of thought: the text after the last "answer is", minus end punctuation.

  Text with no "answer is" comes back stripped, so direct answers pass through unchanged.
  """
  matches = list(_ANSWER_IS.finditer(text))
  if matches:
    text = text[matches[-1].end():]
  return text.strip().rstrip(".").strip()


# ----------------------------------------------------------------------------- input inversion

INVERSION_PATTERNS = (
    ("Write a question whose answer is \"{answer}\", and explain why.",
     "Question: {question}\nReasoning: {rationale}"),
    ("Here is an answer and the reasoning behind it.\nAnswer: {answer}\nReasoning: {rationale}\n"
     "What was the question?", "{question}"),
    ("Come up with a question that this reasoning answers with \"{answer}\": {rationale}",
     "{question}"),
    ("The answer is {answer}. What could the question have been, and how would you justify it?",
     "The question: {question}\nJustification: {rationale}"),
    ("Reverse-engineer the question.\nExplanation: {rationale}\nFinal answer: {answer}",
     "{question}"),
    ("Invent a problem and its solution, where the solution ends with the answer {answer}.",
     "Problem: {question}\nSolution: {rationale}"),
    ("Given the reasoning \"{rationale}\" and the answer \"{answer}\", reconstruct the question.",
     "{question}"),
    ("Answer: {answer}\nWhat question and explanation lead to this answer?",
     "{question}\n{rationale}"),
    ("Create a question for which the following is a correct step-by-step answer.\n{rationale} "
     "So the answer is {answer}.", "{question}"),
    ("I know the answer is {answer}. Which question is it, and what is the reasoning?",
     "Question: {question}\nReasoning: {rationale}"),
)


def inversion_family(name: str) -> TemplateFamily:
  """Input-inversion family for CoT data: given answer (and often the rationale), produce the question.

  Expects canonical examples with `question`, `answer` and `rationale`; render it with `zs_noopt` or
  `fs_noopt`.
  """
  return TemplateFamily(name, tuple(Template(i, t) for i, t in INVERSION_PATTERNS))
