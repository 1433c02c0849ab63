"""Applying templates to example streams: round-robin template choice, few-shot assembly, metadata.

`Formatter` is the pure-Python engine: `format(position, example)` turns the canonical example at a
stream position into `{inputs, targets, _task_name, _task_source, _template_type, _template_idx}`,
or `None` when a few-shot query ends up with no exemplar (such queries are dropped).

* Template choice is round-robin by stream position, never random: with one template type,
  `_template_idx = position % len(templates)`. With several types (e.g. `("zs_opt", "fs_opt")`)
  the type is `types[position % len(types)]` and the index advances once per cycle of types.
* Randomized options (`options_mode="random"`) draw one layout per prompt from an rng seeded by
  `(seed, task_name, position)`, so the query and its exemplars share header and markers, and the
  same seed always gives the same stream.
* Few-shot: `x_shot` draws 25 candidates from the exemplar pool (the train split), gives each a
  random template and keeps those that landed on the query's template (~2.5 for 10 templates; a
  pool smaller than 25, like NIv2's Positive Examples, is shown whole in the query's template);
  `mix_five_shot` keeps 5 exemplars with mixed templates. Exemplars are pruned from the front until
  the tokenized input fits `max_input_tokens` (1,920 by default, of 2,048). Each task gets one of
  `DELIMITERS`, chosen by a stable hash of its name.

`make_preprocessor(...)` wraps a formatter as a SeqIO preprocessor on tf.data. The rendering runs in
Python over the upstream dataset (a generator source), which keeps the stream deterministic. With
`tokenize=True` it also tokenizes, in Python with the same SentencePiece model, and replaces
`seqio.preprocessors.tokenize` (same features, same ids): a task then builds no TF SentencePiece
op, whose start-up (~0.5 s per task and per `get_dataset`, measured under load) weighs on mixtures
of many tasks, and few-shot prompts reuse the ids computed while pruning instead of being encoded
twice.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from flan_jax.data import templates as tpl

X_SHOT = "x_shot"
MIX_FIVE_SHOT = "mix_five_shot"
DEFAULT_MAX_INPUT_TOKENS = 1920
METADATA_KEYS = ("_task_name", "_task_source", "_template_type", "_template_idx")

OUTPUT_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "_task_name": tf.TensorSpec([], tf.string),
    "_task_source": tf.TensorSpec([], tf.string),
    "_template_type": tf.TensorSpec([], tf.string),
    "_template_idx": tf.TensorSpec([], tf.int32),
}
TEXT_FEATURES = ("inputs", "targets")


@dataclasses.dataclass(frozen=True)
class Delimiter:
  """How few-shot exemplars are joined: `example_sep` between blocks, `target_prefix` before targets.

  The query ends with `target_prefix` stripped of whitespace (e.g. "Answer:"), so the model sees the
  same cue before its own answer as before the exemplars' answers.
  """
  example_sep: str
  target_prefix: str


DELIMITERS = (
    Delimiter("\n\n", "\n"),
    Delimiter("\n\n\n", "\n"),
    Delimiter("\n\n", "\nAnswer: "),
    Delimiter("\n\n", "\nA: "),
    Delimiter("\n\n###\n\n", "\n"),
    Delimiter("\n\n", " "),
    Delimiter("\n----\n", "\n"),
    Delimiter("\n\n", "\nOutput: "),
    Delimiter("\n\n\n", "\nResponse: "),
    Delimiter("\n\n", "\n\n"),
)


def delimiter_for_task(task_name: str) -> Delimiter:
  """A delimiter chosen by a stable hash of the task name (same task → same delimiter, everywhere)."""
  return DELIMITERS[zlib.crc32(task_name.encode("utf-8")) % len(DELIMITERS)]


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
  """Few-shot assembly settings (see module docstring)."""
  mode: str = X_SHOT
  num_candidates: int = 25
  num_mixed: int = 5
  max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS
  pool_size: int = 1000

  def __post_init__(self):
    if self.mode not in (X_SHOT, MIX_FIVE_SHOT):
      raise ValueError(f"Unknown few-shot mode '{self.mode}': use '{X_SHOT}' or '{MIX_FIVE_SHOT}'.")


ExemplarSource = Union[Sequence[Mapping[str, Any]], Callable[[], Iterable[Mapping[str, Any]]]]
TokenCounter = Callable[[str], int]


class Formatter:
  """Renders canonical examples of one task through one template family (see module docstring).

  Args:
    family: the template family.
    template_types: one type or a sequence of types (e.g. `"zs_opt"` or `("zs_cot", "fs_cot")`),
      rotated by stream position.
    task_name, task_source: written into every example's metadata.
    seed: seeds option layouts and exemplar draws.
    options_mode: "deterministic" or "random" option rendering.
    exemplars: the exemplar pool (train split) for few-shot types: a sequence of canonical examples
      or a zero-argument callable returning an iterable of them (read once, first `pool_size`);
      from tf.data: `lambda: map(to_python, train_dataset.as_numpy_iterator())`.
    fewshot: few-shot settings.
    token_counter: counts tokens of an input string; needed for pruning to `max_input_tokens`
      (without it no pruning happens).
    delimiter: few-shot delimiter; default `delimiter_for_task(task_name)`.
  """

  def __init__(self, family: tpl.TemplateFamily, template_types: Union[str, Sequence[str]], *,
               task_name: str, task_source: str = "", seed: int = 0,
               options_mode: str = "deterministic", exemplars: Optional[ExemplarSource] = None,
               fewshot: FewShotConfig = FewShotConfig(),
               token_counter: Optional[TokenCounter] = None,
               delimiter: Optional[Delimiter] = None):
    self.types = (template_types,) if isinstance(template_types, str) else tuple(template_types)
    if not self.types:
      raise ValueError(f"Task '{task_name}': give at least one template type.")
    if options_mode not in ("deterministic", "random"):
      raise ValueError(f"options_mode must be 'deterministic' or 'random', not '{options_mode}'.")
    self.variants = {t: family.variant(t) for t in self.types}
    if any(t in tpl.FEW_SHOT_TYPES for t in self.types) and exemplars is None:
      raise ValueError(f"Task '{task_name}' uses few-shot templates but has no exemplar pool: "
                       "pass exemplars=<train split examples>.")
    self.family = family
    self.task_name = task_name
    self.task_source = task_source
    self.seed = seed
    self.options_mode = options_mode
    self.fewshot = fewshot
    self.token_counter = token_counter
    self.delimiter = delimiter or delimiter_for_task(task_name)
    self._exemplar_source = exemplars
    self._pool: Optional[list[Mapping[str, Any]]] = None

  # --- public API

  def assignment(self, position: int) -> tuple[str, int]:
    """(template type, template index) for a stream position."""
    template_type = self.types[position % len(self.types)]
    cycle = position // len(self.types)
    return template_type, cycle % len(self.variants[template_type])

  def format(self, position: int, example: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The rendered example at `position`, or None for a few-shot query left with no exemplar."""
    template_type, index = self.assignment(position)
    key = f"{self.seed}:{self.task_name}:{position}"
    if template_type in tpl.FEW_SHOT_TYPES:
      rendered = self._few_shot(template_type, index, example, key)
      if rendered is None:
        return None
    else:
      rendered = self._render(template_type, index, example, key)
    return {
        "inputs": rendered.inputs,
        "targets": rendered.targets,
        "_task_name": self.task_name,
        "_task_source": self.task_source,
        "_template_type": template_type,
        "_template_idx": index,
    }

  def format_stream(self, examples: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Formats a stream, positions counted from 0, dropping queries left without exemplars."""
    for position, example in enumerate(examples):
      out = self.format(position, example)
      if out is not None:
        yield out

  # --- internals

  def _render(self, template_type: str, index: int, example: Mapping[str, Any],
              key: str) -> tpl.Rendered:
    rng = random.Random(key) if self.options_mode == "random" else None
    where = f"task '{self.task_name}' template {template_type}[{index}]"
    return tpl.render(self.variants[template_type][index], example, template_type=template_type,
                      rng=rng, where=where)

  def _exemplar_pool(self) -> list[Mapping[str, Any]]:
    if self._pool is None:
      source = self._exemplar_source
      items = source() if callable(source) else source
      self._pool = [dict(e) for e in itertools.islice(items, self.fewshot.pool_size)]
      if not self._pool:
        raise ValueError(f"Task '{self.task_name}': the exemplar pool is empty; few-shot templates "
                         "need train examples.")
    return self._pool

  def _pick_exemplars(self, index: int, num_templates: int, example: Mapping[str, Any],
                      rng: random.Random) -> list[tuple[Mapping[str, Any], int]]:
    pool = self._exemplar_pool()
    cfg = self.fewshot
    want = cfg.num_candidates if cfg.mode == X_SHOT else cfg.num_mixed
    chosen = []
    for i in rng.sample(range(len(pool)), min(len(pool), want + 1)):
      if len(chosen) == want:
        break
      candidate = pool[i]
      if _same_example(candidate, example):
        continue
      chosen.append((candidate, rng.randrange(num_templates)))
    if cfg.mode == X_SHOT and len(pool) < cfg.num_candidates:
      # A pool smaller than the candidate draw is a curated demonstration set (NIv2's Positive
      # Examples hold 2-4): filtering by a random template would drop almost every query, so
      # up to `num_mixed` of them are all shown in the query's template.
      return [(c, index) for c, _ in chosen[:cfg.num_mixed]]
    if cfg.mode == X_SHOT:
      chosen = [(c, t) for c, t in chosen if t == index]
    return chosen

  def _few_shot(self, template_type: str, index: int, example: Mapping[str, Any],
                key: str) -> Optional[tpl.Rendered]:
    num_templates = len(self.variants[template_type])
    exemplars = self._pick_exemplars(index, num_templates, example, random.Random("fs:" + key))
    blocks = []
    for candidate, candidate_index in exemplars:
      shot = self._render(template_type, candidate_index, candidate, key)
      blocks.append(shot.inputs + self.delimiter.target_prefix + shot.targets)
    query = self._render(template_type, index, example, key)
    query_inputs = query.inputs
    cue = self.delimiter.target_prefix.strip()
    if cue:
      query_inputs += self.delimiter.target_prefix.rstrip()
    while blocks:
      inputs = self.delimiter.example_sep.join(blocks + [query_inputs])
      if self.token_counter is None or self.token_counter(inputs) <= self.fewshot.max_input_tokens:
        return tpl.Rendered(inputs, query.targets)
      blocks.pop(0)
    return None


def _same_example(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
  return all(_plain(a.get(k)) == _plain(b.get(k)) for k in set(a) | set(b))


def _plain(value: Any) -> Any:
  if isinstance(value, (list, tuple, np.ndarray)):
    return tuple(_plain(v) for v in value)
  return value


def to_python(example: Mapping[str, Any]) -> dict[str, Any]:
  """A numpy example (as from `as_numpy_iterator`) as plain Python: bytes → str, arrays → lists."""
  out = {}
  for key, value in example.items():
    if isinstance(value, bytes):
      out[key] = value.decode("utf-8")
    elif isinstance(value, np.ndarray):
      out[key] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
    elif isinstance(value, np.generic):
      out[key] = value.item()
    else:
      out[key] = value
  return out


class Encoder:
  """Token counting and encoding with one vocabulary, remembering the last text it encoded.

  The formatter counts the tokens of every few-shot prompt it keeps; `encode` of that same text
  right after (tokenizing the rendered example) reuses those ids instead of encoding it again.
  The memo is per thread and keyed by the text itself, so a hit always returns the text's own ids.
  """

  def __init__(self, vocabulary: Any):
    self.vocabulary = vocabulary
    self._last = threading.local()

  def encode(self, text: str) -> list[int]:
    last = getattr(self._last, "pair", None)
    if last is not None and last[0] == text:
      return last[1]
    ids = self.vocabulary.encode(text)
    self._last.pair = (text, ids)
    return ids

  def __call__(self, text: str) -> int:
    return len(self.encode(text))


def apply_formatter(dataset: tf.data.Dataset, formatter: Formatter, chunk_size: int = 64,
                    encoders: Optional[Mapping[str, Encoder]] = None) -> tf.data.Dataset:
  """Runs `formatter` over a tf.data stream of canonical examples (positions counted from 0).

  The generator hands tf.data chunks of `chunk_size` rendered examples, which are unbatched again:
  `from_generator` costs about half a millisecond per element, so per-example yields would dominate.
  With `encoders` ({"inputs": ..., "targets": ...}) the texts are also tokenized, giving the
  features `seqio.preprocessors.tokenize` would: int32 ids under the feature name and the text
  under `<name>_pretokenized`.
  """
  signature = dict(OUTPUT_SIGNATURE)
  if encoders:
    for key in TEXT_FEATURES:
      signature[f"{key}_pretokenized"] = signature[key]
      signature[key] = tf.TensorSpec([None], tf.int32)

  def generate():
    stream = formatter.format_stream(_python_rows(dataset, chunk_size))
    while chunk := list(itertools.islice(stream, chunk_size)):
      columns = {key: [example[key] for example in chunk] for key in OUTPUT_SIGNATURE}
      if encoders:
        for key in TEXT_FEATURES:
          texts = columns[f"{key}_pretokenized"] = columns[key]
          ids = [encoders[key].encode(t) for t in texts]
          columns[key] = tf.RaggedTensor.from_row_lengths(
              np.fromiter(itertools.chain.from_iterable(ids), np.int32),
              np.array([len(i) for i in ids], np.int64))
      yield columns

  chunk_signature = {
      k: (tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1) if spec.shape.rank
          else tf.TensorSpec([None], spec.dtype)) for k, spec in signature.items()}
  return tf.data.Dataset.from_generator(generate, output_signature=chunk_signature).unbatch()


def _python_rows(dataset: tf.data.Dataset, chunk_size: int) -> Iterator[dict[str, Any]]:
  """The rows of `dataset` as `to_python` dicts, read in batches.

  One eager `next` per row cost about as much as rendering the row; `ragged_batch` reads
  `chunk_size` rows per call. Each row's values are what per-row iteration gives (bytes, arrays,
  numpy scalars), so the rows are identical.
  """
  for batch in dataset.ragged_batch(chunk_size).as_numpy_iterator():
    for i in range(len(next(iter(batch.values())))):
      yield to_python({key: value[i] for key, value in batch.items()})


def output_encoders(output_features: Optional[Mapping[str, Any]]) -> dict[str, Encoder]:
  """{feature: Encoder} for the `inputs`/`targets` SeqIO output features that are present.

  Features sharing one vocabulary share one encoder (and its memo).
  """
  encoders: dict[str, Encoder] = {}
  for key in TEXT_FEATURES:
    if output_features and key in output_features:
      vocabulary = output_features[key].vocabulary
      shared = [e for e in encoders.values() if e.vocabulary is vocabulary]
      encoders[key] = shared[0] if shared else Encoder(vocabulary)
  return encoders


def make_preprocessor(family: tpl.TemplateFamily, template_types: Union[str, Sequence[str]], *,
                      task_name: str, task_source: str = "", seed: int = 0,
                      options_mode: str = "deterministic",
                      exemplars: Optional[ExemplarSource] = None,
                      fewshot: FewShotConfig = FewShotConfig(),
                      delimiter: Optional[Delimiter] = None,
                      tokenize: bool = False) -> Callable[..., tf.data.Dataset]:
  """A SeqIO preprocessor rendering canonical examples with `family` (args as for `Formatter`).

  Put it first in a Task's preprocessors, before `seqio.preprocessors.tokenize` (or, with
  `tokenize=True`, instead of it: see the module docstring). It takes SeqIO's `output_features` so
  few-shot pruning counts tokens with the task's own input vocabulary.
  """
  # Built once so the exemplar pool is read once per process, not once per get_dataset call.
  formatter = Formatter(family, template_types, task_name=task_name, task_source=task_source,
                        seed=seed, options_mode=options_mode, exemplars=exemplars,
                        fewshot=fewshot, delimiter=delimiter)

  def preprocess(dataset: tf.data.Dataset, output_features=None) -> tf.data.Dataset:
    encoders = output_encoders(output_features)
    formatter.token_counter = encoders.get("inputs")
    if tokenize and len(encoders) < len(TEXT_FEATURES):
      raise ValueError(f"Task '{task_name}': tokenize=True needs SeqIO output features "
                       "'inputs' and 'targets' (their vocabularies tokenize the texts).")
    return apply_formatter(dataset, formatter, encoders=encoders if tokenize else None)

  preprocess.__name__ = f"format_{family.name}"
  return preprocess
