r"""Generate from, or score with, a checkpoint over a file of prompts (or a SeqIO task); write JSONL.

  python -m flan_jax.infer --checkpoint=MODEL_DIR --input_file=prompts.jsonl \
      --output_file=out.jsonl --mode=generate --decode=beam --max_decode_length=64
  python -m flan_jax.infer --checkpoint=MODEL_DIR --input_file=pairs.jsonl \
      --output_file=scores.jsonl --mode=score

Inputs: JSONL (`.jsonl`/`.json`: one `{"inputs": ..., "targets": ...}` object per line; other
fields are copied through) or plain text (any other name: one prompt per line), or
`--task=NAME --split=validation` (a registered SeqIO task or mixture, its pretokenized fields).
Outputs: each input record plus "prediction" (text, or a list of texts when --num_samples > 1)
or "score" (summed log-likelihood of the targets, EOS included).

Gin: `--gin_file` / `--gin.infer.NAME=VALUE` set any argument of `infer()`; flags given on the
command line win over gin.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gin
import jax
from absl import flags

from flan_jax import gin_utils, partitioning

MODES = ("generate", "score")

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (flan_jax; or T5X/HF when the "
                                  "converter's auto-loader is installed).")
_INPUT_FILE = flags.DEFINE_string("input_file", None, "JSONL ({'inputs', 'targets'}) or text file.")
_OUTPUT_FILE = flags.DEFINE_string("output_file", None, "Where to write the JSONL results.")
_MODE = flags.DEFINE_enum("mode", None, MODES, "generate: decode predictions; score: target log-likelihood.")
_DECODE = flags.DEFINE_enum("decode", None, ["greedy", "beam", "sample"], "Decoding method.")
_TASK = flags.DEFINE_string("task", None, "A registered SeqIO task/mixture to read instead of a file.")
_SPLIT = flags.DEFINE_string("split", None, "Split of --task.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Read at most this many examples.")
_INTS = {name: flags.DEFINE_integer(name, None, help_text) for name, help_text in [
    ("max_decode_length", "Most tokens to generate."),
    ("num_samples", "Samples (or best beams) per prompt."),
    ("topk", "Sample among the k most likely tokens (0: all)."),
    ("beam_size", "Beams for --decode=beam."),
    ("batch_size", "Prompts per batch (rounded up to the number of data-parallel devices)."),
    ("model_parallel", "Devices each parameter is split over, for models too big for one device."),
    ("seed", "Random seed for --decode=sample."),
    ("step", "Checkpoint step (default: latest)."),
]}
_FLOATS = {name: flags.DEFINE_float(name, None, help_text) for name, help_text in [
    ("temperature", "Sampling temperature (0 = greedy)."),
    ("topp", "Nucleus sampling mass (0: off)."),
    ("alpha", "Beam search length penalty."),
]}


class InputError(ValueError):
  """A malformed input line; the message names the file and line."""


def read_records(path: str | Path, mode: str) -> list[dict[str, Any]]:
  """Records with an 'inputs' string (and 'targets' in score mode) from a JSONL or text file."""
  path = Path(path)
  if not path.is_file():
    raise InputError(f"input file {path} does not exist")
  jsonl = path.suffix in (".jsonl", ".json")
  records = []
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if not jsonl:
        records.append({"inputs": line.rstrip("\n")})
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be one object "
                         f'like {{"inputs": "...", "targets": "..."}}') from None
      _check_record(record, mode, f"{path}:{number}")
      records.append(record)
  return records


def _check_record(record: Any, mode: str, where: str) -> None:
  if not isinstance(record, dict) or not isinstance(record.get("inputs"), str):
    raise InputError(f'{where}: needs a string field "inputs"; got {str(record)[:80]}')
  if mode == "score" and not isinstance(record.get("targets"), str):
    raise InputError(f'{where}: --mode=score needs a string field "targets" on every line')


def task_records(name: str, split: str, num_examples: int | None) -> Iterator[dict[str, Any]]:
  """Pretokenized inputs/targets (and metadata) of a registered SeqIO task or mixture."""
  from flan_jax.data import registry  # pylint: disable=import-outside-toplevel
  dataset = registry.get_mixture_or_task(name).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1)
  if num_examples is not None:
    dataset = dataset.take(num_examples)
  for example in dataset.as_numpy_iterator():
    record = {}
    for key in ("inputs", "targets"):
      value = example.get(f"{key}_pretokenized", example.get(key))
      record[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    for key, value in example.items():
      if key.startswith("_"):
        record[key] = value.decode("utf-8") if isinstance(value, bytes) else value.item()
    yield record


@gin.configurable
def infer(checkpoint: str | None = None, output_file: str | None = None, mode: str = "generate",
          input_file: str | None = None, task: str | None = None, split: str = "validation",
          num_examples: int | None = None, decode: str = "greedy", max_decode_length: int = 64,
          num_samples: int = 1, temperature: float = 1.0, topk: int = 0, topp: float = 0.0,
          beam_size: int = 4, alpha: float = 0.6, batch_size: int = 8, seed: int = 0,
          step: int | None = None, model_parallel: int = 1) -> int:
  """Runs inference over the inputs and writes one JSON line per input; returns the count.

  Under a multi-process runtime every process computes; process 0 writes the file.
  """
  from flan_jax import api  # pylint: disable=import-outside-toplevel
  if checkpoint is None or output_file is None:
    raise InputError("--checkpoint and --output_file are required")
  if mode not in MODES:
    raise InputError(f"mode '{mode}' is not one of {MODES}")
  if (input_file is None) == (task is None):
    raise InputError("give exactly one of --input_file and --task")
  if input_file is not None:
    records = read_records(input_file, mode)
  else:
    records = list(task_records(task, split, num_examples))
  records = records[:num_examples] if num_examples is not None else records
  model = api.load(checkpoint, step=step, batch_size=batch_size, model_parallel=model_parallel)
  prompts = [r["inputs"] for r in records]
  if mode == "score":
    for record, score in zip(records, model.score(prompts, [r["targets"] for r in records])):
      record["score"] = score
  else:
    predictions = model.generate(
        prompts, decode=decode, max_decode_length=max_decode_length, num_samples=num_samples,
        temperature=temperature, topk=topk, topp=topp, beam_size=beam_size, alpha=alpha, seed=seed)
    for record, prediction in zip(records, predictions):
      record["prediction"] = prediction
  if jax.process_index() == 0:
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    with open(output_file, "w", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return len(records)


def main() -> None:
  partitioning.initialize_distributed()
  overrides = {name: flag.value for name, flag in {
      "checkpoint": _CHECKPOINT, "input_file": _INPUT_FILE, "output_file": _OUTPUT_FILE,
      "mode": _MODE, "decode": _DECODE, "task": _TASK, "split": _SPLIT,
      "num_examples": _NUM_EXAMPLES, **_INTS, **_FLOATS}.items() if flag.value is not None}
  try:
    count = infer(**overrides)
  except (InputError, FileNotFoundError) as e:
    # gin appends "In call to configurable ..." lines; the first line is the message.
    raise SystemExit(f"error: {str(e).splitlines()[0]}") from None
  if jax.process_index() == 0:
    print(f"wrote {count} lines ({jax.process_count()} processes, {jax.device_count()} devices)")


if __name__ == "__main__":
  gin_utils.run(main)
