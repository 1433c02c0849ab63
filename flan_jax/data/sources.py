"""Data sources for the Flan collection: TFDS, Hugging Face, local JSONL/TSV, NIv2 task JSON, Flan JSONL.

Every source yields *canonical examples* (see `templates.py`): string fields plus `answer` and, for
option tasks, `options`. Nothing is read at construction time, so task registration works without any
data present; a missing file or dataset fails when the data is first read, with one message naming
it and how to get it.

Local files are read whole into memory (the CoT TSVs and NIv2 tasks are at most a few MB each) and
served with `from_tensor_slices`, which keeps the row order fixed, so streams are deterministic.
Malformed rows raise `MalformedRowError` naming the file and line; with `skip_malformed=True` they
are counted in `SkipStats` instead (read `stats.skipped` after the dataset has been read).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

PathLike = Union[str, os.PathLike]
RowFn = Callable[[dict[str, Any]], dict[str, Any]]
SplitFiles = Mapping[str, Union[PathLike, Sequence[PathLike]]]
DATA_DIR_ENV = "FLAN_JAX_DATA_DIR"
FLAN_METADATA_FIELDS = ("_task_name", "_task_source", "_template_type", "_template_idx")


class MalformedRowError(ValueError):
  """A row of a local data file could not be parsed (the message names the file and line)."""


@dataclasses.dataclass
class SkipStats:
  """Counts rows skipped by `skip_malformed=True` readers; `first_error` says why the first was."""
  skipped: int = 0
  first_error: str = ""

  def record(self, message: str) -> None:
    self.skipped += 1
    self.first_error = self.first_error or message


def data_dir() -> Path:
  """The shared data folder: `$FLAN_JAX_DATA_DIR`, else ../shared/data beside the repository."""
  if os.environ.get(DATA_DIR_ENV):
    return Path(os.environ[DATA_DIR_ENV])
  return Path(__file__).resolve().parents[3] / "shared" / "data"


def _require_file(path: Path, what: str, how_to_get: str = "") -> None:
  if not path.exists():
    raise FileNotFoundError(
        f"{what} file '{path}' does not exist. " + (how_to_get or (
            f"Download it from its source and point ${DATA_DIR_ENV} at the folder holding it "
            "(or fix the path).")))


def _fail(message: str, stats: Optional[SkipStats], skip: bool) -> None:
  if not skip:
    raise MalformedRowError(message + " Fix the row or pass skip_malformed=True to count and skip it.")
  if stats is not None:
    stats.record(message)


def _convert(row: dict[str, Any], row_fn: Optional[RowFn], where: str,
             stats: Optional[SkipStats], skip: bool) -> Optional[dict[str, Any]]:
  """`row_fn(row)`; a row it cannot map is malformed at `where` (None when skipped)."""
  if row_fn is None:
    return row
  try:
    return row_fn(row)
  except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
    detail = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
    _fail(f"{where}: cannot map the row ({detail}).", stats, skip)
    return None


def read_jsonl(path: PathLike, *, required: Sequence[str] = (), skip_malformed: bool = False,
               stats: Optional[SkipStats] = None, row_fn: Optional[RowFn] = None,
               how_to_get: str = "") -> list[dict[str, Any]]:
  """Rows of a JSON-lines file (blank lines ignored); each must be an object with `required` keys.

  `row_fn` maps each row (a row it cannot map is malformed); `how_to_get` completes the message for
  a missing file.
  """
  path = Path(path)
  _require_file(path, "JSONL", how_to_get)
  rows = []
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        _fail(f"{path}:{number}: not valid JSON ({e.msg}).", stats, skip_malformed)
        continue
      if not isinstance(row, dict):
        _fail(f"{path}:{number}: expected a JSON object, got {type(row).__name__}.", stats,
              skip_malformed)
        continue
      missing = [k for k in required if k not in row]
      if missing:
        _fail(f"{path}:{number}: missing field(s) {', '.join(missing)}.", stats, skip_malformed)
        continue
      row = _convert(row, row_fn, f"{path}:{number}", stats, skip_malformed)
      if row is not None:
        rows.append(row)
  return rows


def _load_json_file(path: Path, kind: str, how_to_get: str = "") -> Any:
  """The parsed contents of a whole-file JSON document; bad JSON names the file and line."""
  _require_file(path, kind, how_to_get)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise MalformedRowError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e


def read_json_list(path: PathLike, *, skip_malformed: bool = False,
                   stats: Optional[SkipStats] = None, row_fn: Optional[RowFn] = None,
                   how_to_get: str = "") -> list[dict[str, Any]]:
  """Rows of a file holding one JSON list of objects (malformed items are named by index)."""
  path = Path(path)
  items = _load_json_file(path, "JSON", how_to_get)
  if not isinstance(items, list):
    raise MalformedRowError(f"{path}: expected a JSON list of objects, got "
                            f"{type(items).__name__}.")
  rows = []
  for index, item in enumerate(items):
    if not isinstance(item, dict):
      _fail(f"{path}: item {index}: expected a JSON object, got {type(item).__name__}.", stats,
            skip_malformed)
      continue
    row = _convert(item, row_fn, f"{path}: item {index}", stats, skip_malformed)
    if row is not None:
      rows.append(row)
  return rows


def read_tsv(path: PathLike, columns: Sequence[str], *, unescape_newlines: bool = True,
             skip_malformed: bool = False, stats: Optional[SkipStats] = None,
             row_fn: Optional[RowFn] = None, how_to_get: str = "") -> list[dict[str, Any]]:
  """Rows of a header-less TSV with exactly `len(columns)` fields per line.

  The Flan CoT TSVs write newlines inside fields as a literal backslash-n; `unescape_newlines`
  turns them back into newlines.
  """
  path = Path(path)
  _require_file(path, "TSV", how_to_get)
  rows = []
  with path.open(encoding="utf-8", newline="") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      fields = line.split("\t")
      if len(fields) != len(columns):
        _fail(f"{path}:{number}: expected {len(columns)} tab-separated fields "
              f"({', '.join(columns)}), found {len(fields)}.", stats, skip_malformed)
        continue
      if unescape_newlines:
        fields = [v.replace("\\n", "\n") for v in fields]
      row = _convert(dict(zip(columns, fields)), row_fn, f"{path}:{number}", stats, skip_malformed)
      if row is not None:
        rows.append(row)
  return rows


def rows_to_dataset(rows: Sequence[Mapping[str, Any]], where: str) -> tf.data.Dataset:
  """A tf.data stream of `rows` (strings, numbers, or lists of strings → variable-length vectors)."""
  if not rows:
    raise ValueError(f"{where} has no rows.")
  keys = list(rows[0])
  columns = {}
  for key in keys:
    values = [row.get(key) for row in rows]
    if any(v is None for v in values):
      raise ValueError(f"{where}: field '{key}' is missing in some rows; give every row the same "
                       "fields.")
    if isinstance(values[0], (list, tuple)):
      columns[key] = tf.ragged.constant([[str(x) for x in v] for v in values], dtype=tf.string)
    elif isinstance(values[0], bool) or not isinstance(values[0], (int, float)):
      columns[key] = tf.constant([str(v) for v in values])
    else:
      columns[key] = tf.constant(values)
  return tf.data.Dataset.from_tensor_slices(columns)


def _file_list(files: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
  return [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]


def local_source(split_files: SplitFiles, *, file_format: str = "jsonl",
                 columns: Sequence[str] = (), required: Sequence[str] = (),
                 row_fn: Optional[RowFn] = None, skip_malformed: bool = False,
                 stats: Optional[SkipStats] = None,
                 num_input_examples: Optional[Mapping[str, int]] = None,
                 how_to_get: str = "") -> seqio.DataSource:
  """A SeqIO source over local JSONL or TSV files, one or more per split.

  Args:
    split_files: {split: file or files}.
    file_format: "jsonl", "json" (one JSON list of objects) or "tsv" (TSV needs `columns`).
    columns: TSV column names.
    required: JSONL keys every row must have.
    row_fn: maps a parsed row to a canonical example (e.g. renames fields); a row it cannot map
      (KeyError, ValueError, TypeError, ...) is malformed, named by file and line.
    skip_malformed: count and skip malformed rows (in `stats`) instead of raising.
    num_input_examples: known example counts per split (used by mixing rates).
    how_to_get: how to obtain a missing file (ends the error message), e.g. the export command.
  """
  if file_format not in ("jsonl", "json", "tsv"):
    raise ValueError(f"file_format must be 'jsonl', 'json' or 'tsv', not '{file_format}'.")
  if file_format == "tsv" and not columns:
    raise ValueError("A TSV source needs columns=[...] naming its tab-separated fields.")

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed  # Files are read in order; shuffling is left to the mixture.
    rows = []
    common = dict(skip_malformed=skip_malformed, stats=stats, row_fn=row_fn, how_to_get=how_to_get)
    for path in _file_list(split_files[split]):
      if file_format == "jsonl":
        rows += read_jsonl(path, required=required, **common)
      elif file_format == "json":
        rows += read_json_list(path, **common)
      else:
        rows += read_tsv(path, columns, **common)
    paths = ", ".join(str(p) for p in _file_list(split_files[split]))
    return rows_to_dataset(rows, f"split '{split}' ({paths})")

  return seqio.FunctionDataSource(dataset_fn, splits=list(split_files),
                                  num_input_examples=num_input_examples)


# ----------------------------------------------------------------------------- Flan CoT TSVs

COT_COLUMNS = ("question", "answer", "rationale")


COT_TSV_URL = "https://github.com/google-research/FLAN/tree/main/flan/v2/cot_data"


def cot_tsv_source(path: PathLike, *, skip_malformed: bool = False,
                   num_examples: Optional[int] = None) -> seqio.DataSource:
  """A Flan CoT training TSV (question, answer, rationale) as the `train` split."""
  counts = {"train": num_examples} if num_examples else None
  path = Path(path)
  how_to_get = (f"Get {path.name} from the Flan collection's CoT data ({COT_TSV_URL}/{path.name}) "
                f"and put it in {path.parent} (or point ${DATA_DIR_ENV} at a folder holding "
                "flan_cot/).")
  return local_source({"train": path}, file_format="tsv", columns=COT_COLUMNS,
                      skip_malformed=skip_malformed, num_input_examples=counts,
                      how_to_get=how_to_get)


def gsm8k_row(row: Mapping[str, Any]) -> dict[str, str]:
  """An upstream GSM8K row (`answer` = worked solution ending in `#### N`) as a CoT example."""
  rationale, _, answer = str(row["answer"]).rpartition("####")
  return {"question": str(row["question"]), "answer": answer.strip().replace(",", ""),
          "rationale": " ".join(rationale.split())}


def gsm8k_source(folder: PathLike, *, num_input_examples: Optional[Mapping[str, int]] = None
                 ) -> seqio.DataSource:
  """GSM8K from the upstream `train.jsonl` / `test.jsonl` (openai/grade-school-math layout)."""
  folder = Path(folder)
  return local_source({"train": folder / "train.jsonl", "test": folder / "test.jsonl"},
                      required=("question", "answer"), row_fn=gsm8k_row,
                      num_input_examples=num_input_examples)


# ----------------------------------------------------------------------------- NIv2 task JSON

NIV2_URL = "https://github.com/allenai/natural-instructions"


@functools.lru_cache(maxsize=64)
def read_niv2_task(path: PathLike) -> dict[str, Any]:
  """A Super-NaturalInstructions task file, checked for the fields the Flan templates use."""
  path = Path(path)
  task = _load_json_file(path, "Super-NaturalInstructions task", (
      f"Clone {NIV2_URL} (its tasks/ folder holds every task file) and set $FLAN_JAX_NIV2_DIR "
      "to the clone."))
  missing = [k for k in ("Definition", "Positive Examples", "Instances") if k not in task]
  if missing:
    raise MalformedRowError(f"{path}: not a Super-NaturalInstructions task file (missing "
                            f"{', '.join(missing)}).")
  return task


def _definition(task: Mapping[str, Any]) -> str:
  definition = task["Definition"]
  return " ".join(definition) if isinstance(definition, list) else str(definition)


def _niv2_pairs(path: PathLike, key: str) -> list[dict[str, str]]:
  """`key` ("Instances" or "Positive Examples") as canonical examples; the answer is the first
  reference output. A malformed entry is named by file, key and index."""
  task = read_niv2_task(path)
  definition = _definition(task)
  out = []
  for index, entry in enumerate(task[key]):
    outputs = entry.get("output") if isinstance(entry, dict) else None
    answer = outputs[0] if isinstance(outputs, list) and outputs else outputs
    if not isinstance(entry, dict) or not isinstance(entry.get("input"), str) or not (
        isinstance(answer, str) and answer):
      raise MalformedRowError(
          f"{path}: {key}[{index}]: expected an object with a string 'input' and a non-empty "
          "'output' (a string or a list of strings). Fix the task file.")
    out.append({"definition": definition, "input": entry["input"], "answer": answer})
  return out


def niv2_examples(path: PathLike) -> list[dict[str, str]]:
  """Canonical examples of an NIv2 task's Instances: definition, input, answer."""
  return _niv2_pairs(path, "Instances")


def niv2_positive_examples(path: PathLike) -> list[dict[str, str]]:
  """The task's Positive Examples as canonical examples: the few-shot exemplar pool."""
  return _niv2_pairs(path, "Positive Examples")


def niv2_source(path: PathLike, *, num_examples: Optional[int] = None) -> seqio.DataSource:
  """An NIv2 task file's Instances as the `train` split (NIv2 ships one instance list per task)."""

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del split, shuffle_files, seed
    return rows_to_dataset(niv2_examples(path), str(path))

  counts = {"train": num_examples} if num_examples else None
  return seqio.FunctionDataSource(dataset_fn, splits=["train"], num_input_examples=counts)


# ----------------------------------------------------------------------------- Flan JSONL

def flan_jsonl_row(row: Mapping[str, Any]) -> dict[str, Any]:
  """A pre-rendered Flan row (inputs, targets, task_name/task_source/template_type) with metadata."""
  return {"inputs": str(row["inputs"]), "targets": str(row["targets"]),
          "_task_name": str(row.get("task_name", row.get("_task_name", ""))),
          "_task_source": str(row.get("task_source", row.get("_task_source", ""))),
          "_template_type": str(row.get("template_type", row.get("_template_type", ""))),
          "_template_idx": int(row.get("template_idx", row.get("_template_idx", -1)))}


def flan_jsonl_source(split_files: SplitFiles, *, skip_malformed: bool = False,
                      stats: Optional[SkipStats] = None) -> seqio.DataSource:
  """Pre-rendered Flan JSONL: already-templated rows, so the task only tokenizes them."""
  return local_source(split_files, required=("inputs", "targets"), row_fn=flan_jsonl_row,
                      skip_malformed=skip_malformed, stats=stats)


# ----------------------------------------------------------------------------- TFDS

class TfdsSource(seqio.TfdsDataSource):
  """`seqio.TfdsDataSource` whose missing-dataset error says how to prepare the dataset."""

  def get_dataset(self, split: Optional[str] = None, *args, **kwargs) -> tf.data.Dataset:
    try:
      return super().get_dataset(split, *args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      name = self.tfds_dataset.name
      raise FileNotFoundError(
          f"TFDS dataset '{name}' (split '{split}') could not be loaded "
          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Prepare it with "
          f"`tfds build {name.split(':')[0]} --data_dir=DIR` and pass that DIR as "
          f"$TFDS_DATA_DIR (or tfds_data_dir=).") from e


def tfds_source(tfds_name: str, *,
                splits: Optional[Union[Sequence[str], Mapping[str, str]]] = None,
                tfds_data_dir: Optional[str] = None) -> TfdsSource:
  """A TFDS dataset by `name[/config]:version` (nothing is read or downloaded until used).

  `splits` names the splits, or maps the task's split names to TFDS ones (e.g.
  `{"train": "validation"}` for a dataset published without a training split).
  """
  if ":" not in tfds_name:
    raise ValueError(f"TFDS name '{tfds_name}' needs a version, e.g. '{tfds_name}:1.0.0'.")
  return TfdsSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits)


def _lookup(example: Mapping[str, Any], path: str) -> tf.Tensor:
  """A feature by path: `a/b` for nested features, then optional suffixes `[0]` (first element,
  "" when empty), `[*]` (elements joined by ", "), `|last` (last word), `|drop_last` (all words but
  the last). Numbers become strings (floats rounded to integers)."""
  ops = []
  while True:
    for suffix in ("[0]", "[*]", "|last", "|drop_last"):
      if path.endswith(suffix):
        ops.insert(0, suffix)
        path = path[:-len(suffix)]
        break
    else:
      break
  value = example
  for key in path.split("/"):
    if key not in value:
      raise KeyError(f"Feature '{key}' (of path '{path}') is not in the dataset; it has: "
                     f"{', '.join(sorted(value))}. Fix the task's field mapping.")
    value = value[key]
  for op in ops:
    if op == "[0]":
      value = tf.cond(tf.size(value) > 0, lambda v=value: tf.reshape(v, [-1])[0],
                      lambda v=value: tf.zeros([], v.dtype))
    elif op == "[*]":
      value = tf.strings.reduce_join(tf.reshape(_as_string(value), [-1]), separator=", ")
    else:
      words = tf.strings.split(value)
      value = words[-1] if op == "|last" else tf.strings.reduce_join(words[:-1], separator=" ")
  return _as_string(value)


def _as_string(value: tf.Tensor) -> tf.Tensor:
  if value.dtype == tf.string:
    return value
  if value.dtype.is_floating:
    return tf.strings.as_string(tf.cast(tf.round(value), tf.int64))
  return tf.strings.as_string(value)


def field_mapper(fields: Mapping[str, str], *, answer: Optional[str] = None,
                 label: Optional[str] = None, label_options: Sequence[str] = (),
                 label_values: Sequence[Any] = (), choices: Union[str, Sequence[str]] = (),
                 choice_keys: Optional[str] = None, empty_answer: Optional[str] = None
                 ) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """A preprocessor mapping a source's features to canonical fields (paths as in `_lookup`).

  Examples that cannot give a target are dropped: a label outside the options (SNLI's -1 for "no
  gold label", a value missing from `label_values`) or an empty answer.

  Args:
    fields: canonical name → feature path, for the string fields the templates use.
    answer: path of the answer text (generation tasks).
    label: path of the class label (classification / multiple choice). The answer is
      `options[index]`, where `options` is `label_options` (fixed names) or `choices` (one path to a
      list feature, or several paths, one per choice), and index is the label itself, or its
      position in `label_values` (fixed raw values) / in the `choice_keys` feature (e.g. "A".."E").
    empty_answer: the answer used when the answer text is empty (e.g. "unanswerable" for SQuAD 2.0)
      instead of dropping the example.
  """
  if (answer is None) == (label is None):
    raise ValueError("field_mapper needs exactly one of answer= (generation) or label= (choices).")
  if label is not None and bool(label_options) == bool(choices):
    raise ValueError("A label needs exactly one of label_options= or choices=.")
  fixed_options = tf.constant(list(label_options), tf.string) if label_options else None

  def position(needle: tf.Tensor, haystack: tf.Tensor) -> tf.Tensor:
    """Index of `needle` in `haystack`, -1 when absent."""
    matches = tf.equal(haystack, needle)
    return tf.where(tf.reduce_any(matches), tf.argmax(tf.cast(matches, tf.int32)),
                    tf.constant(-1, tf.int64))

  def convert(example):
    out = {name: _lookup(example, path) for name, path in fields.items()}
    if answer is not None:
      text = _lookup(example, answer)
      if empty_answer is not None:
        text = tf.where(tf.strings.length(tf.strings.strip(text)) > 0, text, empty_answer)
      out["answer"] = text
      return out, tf.strings.length(tf.strings.strip(text)) > 0
    if fixed_options is not None:
      options = fixed_options
    elif isinstance(choices, str):
      options = tf.reshape(_lookup(example, choices), [-1])
    else:
      options = tf.stack([_lookup(example, c) for c in choices])
    raw = _lookup_raw(example, label)
    if label_values:
      index = position(_as_string(raw), tf.constant([str(v) for v in label_values]))
    elif choice_keys is not None:
      index = position(_as_string(raw), tf.reshape(_lookup(example, choice_keys), [-1]))
    else:
      index = tf.cast(raw, tf.int64)
    valid = (index >= 0) & (index < tf.size(options, out_type=tf.int64))
    out["answer"] = tf.cond(valid, lambda: tf.gather(options, index), lambda: tf.constant(""))
    out["options"] = options
    return out, valid

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.filter(lambda _, keep: keep).map(lambda example, _: example)

  return preprocess


def _lookup_raw(example: Mapping[str, Any], path: str) -> tf.Tensor:
  value = example
  for key in path.split("/"):
    if key not in value:
      raise KeyError(f"Label feature '{path}' is not in the dataset; it has: "
                     f"{', '.join(sorted(value))}. Fix the task's field mapping.")
    value = value[key]
  return value


# ----------------------------------------------------------------------------- Hugging Face

def hf_source(path: str, name: Optional[str] = None, *, splits: Sequence[str] = ("train",),
              row_fn: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None
              ) -> seqio.DataSource:
  """A Hugging Face dataset (`datasets.load_dataset(path, name)`), imported only when read."""

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed
    try:
      import datasets  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"Reading Hugging Face dataset '{path}' needs the `datasets` package: "
                        "pip install 'flan_jax[hf]' (or pip install datasets).") from e
    rows = [dict(r) for r in datasets.load_dataset(path, name, split=split)]
    if row_fn is not None:
      rows = [row_fn(r) for r in rows]
    return rows_to_dataset(rows, f"Hugging Face dataset '{path}' split '{split}'")

  return seqio.FunctionDataSource(dataset_fn, splits=list(splits))


# ----------------------------------------------------------------------------- collection metadata

@dataclasses.dataclass(frozen=True)
class CollectionRow:
  """One row of the Flan collection's `flan_collection_info.csv`."""
  source: str
  dataset: str
  specific_category: str
  generic_category: str
  languages: str


def read_collection_info(path: Optional[PathLike] = None) -> list[CollectionRow]:
  """Rows of flan_collection_info.csv (default: `data_dir()/flan_cot/`); [] when the file is absent."""
  path = Path(path) if path else data_dir() / "flan_cot" / "flan_collection_info.csv"
  if not path.exists():
    return []
  with path.open(encoding="utf-8", newline="") as f:
    return [CollectionRow(r["Source"], r["Dataset"], r["Specific Task Category"],
                          r["Generic Task Category"], r["Languages"]) for r in csv.DictReader(f)]
