"""A small Python API for notebooks: finetune, load a checkpoint, then generate or score text.

    import flan_jax
    model_dir = flan_jax.finetune("/tmp/demo", gin_files=["runs/demo.gin"],
                                  bindings={"TRAIN_STEPS": 50})
    flan_jax.read_metrics(model_dir)["train/loss"]       # [(step, loss), ...]
    model = flan_jax.load(model_dir)
    model.generate(["Translate to German: Thank you."], decode="beam", beam_size=4)
    model.score(["Is the sky blue? OPTIONS: - yes - no"], ["yes"])
    model.reinitialized().generate(...)                  # the untrained baseline

`finetune` runs `flan_jax.train.train` in this process with the gin files and bindings that
`python -m flan_jax.train` would take on its command line.

`load` takes a flan_jax model directory (a training run or a converted checkpoint); any other
path (a T5X checkpoint, a Hugging Face folder) goes through `flan_jax.convert.auto.load_any`. A
remote model directory (`gs://bucket/run`) is first copied, spec, vocabulary and the one checkpoint
step asked for, into `$FLAN_JAX_CACHE_DIR/remote/` (reused on the next load of the same step).

Prompts are batched (`batch_size` rows, the last batch padded by repeating its last row), each
batch sharded over the `data` axis of a mesh of all devices; the compiled step is reused for every
batch of the same shape (input lengths are rounded up to a multiple of `LENGTH_BUCKET`).
`model_parallel=N` splits the parameters N ways over the `model` axis with the training rules
(heads, MLP, vocabulary): a model too big for one device's memory is restored straight into its
shards. Under a multi-process runtime (a TPU pod slice) every process runs the same calls and
gets every result.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from flan_jax import model_dir as model_dir_lib
from flan_jax import partitioning

LENGTH_BUCKET = 32
_COPY_CHUNK_BYTES = 64 << 20


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, math.ceil(n / multiple) * multiple)


def _init_shapes(model: Any) -> dict[str, tuple[int, ...]]:
  """Batch shapes for building the model's variables (any will do: parameters do not depend on them)."""
  return {k: v.shape for k, v in model.make_batch([[1]], [[1]], 8, 8).items()}


def abstract_params(model: Any, mesh: Any) -> Any:
  """`model`'s parameters as ShapeDtypeStructs sharded on `mesh` by their logical axes and the
  training rules: the target that restores a checkpoint straight into its shards."""
  from flan_jax.trainer import unbox  # pylint: disable=import-outside-toplevel
  shapes = _init_shapes(model)
  boxed = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes), jax.random.key(0))
  shardings = partitioning.tree_shardings(boxed["params"], mesh)
  return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      unbox(boxed["params"]), shardings)


def inference_mesh(model_parallel: int = 1) -> Any:
  """All devices: `model_parallel` ways over `model` (parameters split), the rest over `data`."""
  return partitioning.create_mesh(data=-1, model=model_parallel)


class LoadedModel:
  """A model wrapper with its parameters placed on a mesh (data-parallel by default)."""

  def __init__(self, model: Any, params: Any, *, batch_size: int = 8, mesh: Any = None):
    self.model = model
    self.vocabulary = model.vocabulary
    self.mesh = inference_mesh() if mesh is None else mesh
    self.batch_size = batch_size
    self.params = jax.device_put(params, jax.tree.map(lambda x: x.sharding,
                                                      abstract_params(model, self.mesh)))

  def _rows(self, batch_size: int | None) -> int:
    divisor = partitioning.batch_divisor(self.mesh)
    return _round_up(batch_size or self.batch_size, divisor)

  def _encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [list(self.vocabulary.encode(t)) + [self.vocabulary.eos_id] for t in texts]

  def _batches(self, inputs: list[list[int]], targets: list[list[int]] | None, rows: int,
               input_length: int, target_length: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(number of real rows, global sharded batch) per chunk of `rows` examples."""
    for start in range(0, len(inputs), rows):
      chunk_in = inputs[start:start + rows]
      chunk_tg = None if targets is None else targets[start:start + rows]
      n = len(chunk_in)
      chunk_in = chunk_in + [chunk_in[-1]] * (rows - n)
      if chunk_tg is not None:
        chunk_tg = chunk_tg + [chunk_tg[-1]] * (rows - n)
      batch = self.model.make_batch(chunk_in, chunk_tg, input_length, target_length)
      yield n, partitioning.same_on_every_host_to_global(batch, self.mesh)

  def _input_length(self, inputs: list[list[int]], max_input_length: int | None) -> int:
    longest = max(len(x) for x in inputs)
    return max_input_length or _round_up(longest, LENGTH_BUCKET)

  def generate(self, prompts: Sequence[str] | str, *, decode: str = "greedy",
               max_decode_length: int = 64, num_samples: int = 1, temperature: float = 1.0,
               topk: int = 0, topp: float = 0.0, beam_size: int = 4, alpha: float = 0.6,
               seed: int = 0, batch_size: int | None = None,
               max_input_length: int | None = None) -> list[str] | list[list[str]]:
    """Decodes each prompt; one string per prompt, or a list of `num_samples` strings if > 1.

    decode: 'greedy', 'sample' (temperature / topk / topp; `seed` fixes the draws) or 'beam'
    (`beam_size` beams, length penalty `alpha`; num_samples returns the best num_samples beams).
    Prompts longer than `max_input_length` tokens are truncated (kept in full by default).
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
      return []
    inputs = self._encode(prompts)
    input_length = self._input_length(inputs, max_input_length)
    outputs: list[Any] = []
    rng = jax.random.PRNGKey(seed)
    with jax.set_mesh(self.mesh):
      for i, (n, batch) in enumerate(self._batches(inputs, None, self._rows(batch_size),
                                                    input_length, max_decode_length)):
        tokens = self.model.predict_batch(
            self.params, batch, jax.random.fold_in(rng, i), decode_method=decode,
            num_decodes=num_samples, max_decode_length=max_decode_length, temperature=temperature,
            topk=topk, topp=topp, beam_size=beam_size, alpha=alpha)
        tokens = multihost_utils.process_allgather(tokens, tiled=True)[:n]
        if num_samples == 1:
          outputs.extend(self._detokenize(row) for row in tokens)
        else:
          outputs.extend([self._detokenize(s) for s in row] for row in tokens)
    return outputs[0] if single else outputs

  def score(self, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int | None = None,
            max_input_length: int | None = None, max_target_length: int | None = None) -> list[float]:
    """Summed log-likelihood of each target (EOS included) given its prompt."""
    if len(prompts) != len(targets):
      raise ValueError(f"score needs one target per prompt; got {len(prompts)} prompts and "
                       f"{len(targets)} targets")
    if not prompts:
      return []
    inputs, target_ids = self._encode(list(prompts)), self._encode(list(targets))
    input_length = self._input_length(inputs, max_input_length)
    target_length = max_target_length or _round_up(max(len(t) for t in target_ids), LENGTH_BUCKET)
    scores: list[float] = []
    with jax.set_mesh(self.mesh):
      for n, batch in self._batches(inputs, target_ids, self._rows(batch_size), input_length,
                                    target_length):
        scores.extend(float(s) for s in multihost_utils.process_allgather(
            self.model.score_batch(self.params, batch), tiled=True)[:n])
    return scores

  def _detokenize(self, ids: np.ndarray) -> str:
    ids = ids.tolist()
    if self.vocabulary.eos_id in ids:
      ids = ids[:ids.index(self.vocabulary.eos_id)]
    return self.vocabulary.decode(ids)

  def reinitialized(self, seed: int = 0) -> LoadedModel:
    """The same architecture and vocabulary with fresh random parameters: the untrained baseline.

    The draw is the one `flan_jax.train` makes for a run from scratch with `train.seed=seed`, so
    for a run trained that way this is exactly its starting point. Compiled functions are shared
    with `self` (same model wrapper), so comparing the two costs no extra compilation.
    """
    from flan_jax.trainer import unbox  # pylint: disable=import-outside-toplevel
    shapes = _init_shapes(self.model)
    rng = jax.random.fold_in(jax.random.key(seed), 0)  # as Trainer.init_state
    with jax.set_mesh(self.mesh):
      params = unbox(jax.jit(lambda r: self.model.get_initial_variables(r, shapes))(rng)["params"])
    return LoadedModel(self.model, params, batch_size=self.batch_size, mesh=self.mesh)


def load(path: str | Path, *, step: int | None = None, batch_size: int = 8,
         model_parallel: int = 1) -> LoadedModel:
  """Loads a checkpoint for inference: a flan_jax model dir, a T5X checkpoint or an HF folder.

  Args:
    path: local path of a flan_jax model directory (a training run's MODEL_DIR or a converted
      checkpoint), or its `gs://` URL (copied locally first: `fetch_model_dir`); any other local
      path is converted on the fly (see `flan_jax.convert`).
    step: checkpoint step of a flan_jax model directory (default: the latest).
    batch_size: rows per compiled batch for `generate` / `score` (rounded up to the number of
      data-parallel devices).
    model_parallel: devices each parameter is split over (a divisor of the device count): for
      models whose float32 parameters do not fit one device. The rest of the devices split batches.
  """
  from flan_jax import models  # pylint: disable=import-outside-toplevel
  if model_dir_lib.is_remote(path):
    path, step = fetch_model_dir(str(path), step)
  path = Path(path).expanduser()
  mesh = inference_mesh(model_parallel)
  if not (path / model_dir_lib.SPEC_FILE).exists():
    from flan_jax.convert import auto  # pylint: disable=import-outside-toplevel
    spec, params = auto.load_any(str(path))
    return LoadedModel(models.build_model(spec), params, batch_size=batch_size, mesh=mesh)
  model = models.build_model(model_dir_lib.read_spec(path), path)
  params = model_dir_lib.restore_params(path, step, target=abstract_params(model, mesh))
  return LoadedModel(model, params, batch_size=batch_size, mesh=mesh)


def fetch_model_dir(url: str, step: int | None = None,
                    cache: str | Path | None = None) -> tuple[Path, int]:
  """Copies a remote flan_jax model dir (spec, vocabulary, one checkpoint step) to a local folder.

  Returns (local model dir, step). `step` defaults to the latest; `cache` to
  `$FLAN_JAX_CACHE_DIR/remote`. Any path etils.epath reads works (gs:// needs Google Cloud
  credentials, e.g. `google.colab.auth.authenticate_user()` in Colab).
  """
  from etils import epath  # pylint: disable=import-outside-toplevel
  from flan_jax.data import vocab  # pylint: disable=import-outside-toplevel
  source = epath.Path(url)
  if not (source / model_dir_lib.SPEC_FILE).exists():
    raise FileNotFoundError(
        f"{url} has no {model_dir_lib.SPEC_FILE}: only flan_jax model directories are read "
        f"remotely; copy other checkpoints locally and load (or convert) them from there")
  checkpoints = source / model_dir_lib.CHECKPOINTS_DIR
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) \
      if checkpoints.exists() else []
  if not steps or (step is not None and step not in steps):
    asked = "" if step is None else f" {step}"
    raise FileNotFoundError(f"no checkpoint step{asked} under {checkpoints} (steps there: "
                            f"{steps or 'none'})")
  step = steps[-1] if step is None else step
  target = Path(cache or vocab.cache_dir() / "remote") / re.sub(r"[^A-Za-z0-9_.-]+", "_",
                                                                 url.rstrip("/"))
  done = target / model_dir_lib.CHECKPOINTS_DIR / f".fetched_{step}"
  if done.exists():
    return target, step
  shutil.rmtree(target / model_dir_lib.CHECKPOINTS_DIR / str(step), ignore_errors=True)
  spec = model_dir_lib.ModelSpec(**json.loads((source / model_dir_lib.SPEC_FILE).read_text()))
  wanted = [source / model_dir_lib.SPEC_FILE, source / spec.vocabulary]
  wanted += _files_under(checkpoints / str(step))
  for file in wanted:
    local = target / file.relative_to(source)
    local.parent.mkdir(parents=True, exist_ok=True)
    with file.open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, _COPY_CHUNK_BYTES)
  done.touch()
  return target, step


def _files_under(folder: Any) -> list[Any]:
  """Every file below an etils.epath folder (whose gs:// backend refuses recursive globs)."""
  files = []
  for child in folder.iterdir():
    files += _files_under(child) if child.is_dir() else [child]
  return files


def _gin_value(value: Any) -> str:
  """A Python value as gin text; strings starting with '@' or '%' stay gin references."""
  if isinstance(value, str) and value[:1] in ("@", "%"):
    return value
  if isinstance(value, Path):
    value = str(value)
  return repr(value)


def finetune(model_dir: str | Path, *, gin_files: Sequence[str] = ("runs/demo.gin",),
             bindings: Mapping[str, Any] | None = None, gin_search_paths: Sequence[str] = (),
             print_fn: Callable[[str], None] = print) -> Path:
  """Trains in this process as `python -m flan_jax.train` would; returns the model directory.

  Args:
    model_dir: MODEL_DIR of the run (checkpoints, TensorBoard events, model_spec.json). A model
      dir that already holds checkpoints resumes from the latest one.
    gin_files: run and model gin files, by path or by name under flan_jax's `gin/`
      (`runs/demo.gin`, `models/flan_t5_small.gin`, ...), as `--gin_file`.
    bindings: {gin key: Python value}, as `--gin.KEY=VALUE`: macros (`{"TRAIN_STEPS": 100}`) or
      parameters (`{"train.log_period": 10, "configs.model_config.name": "flan_t5_small"}`).
      Values are written with `repr`, except strings starting with `@` or `%` (gin references,
      e.g. `{"train.optimizer": "@optim.adamw()"}`).
    gin_search_paths: extra folders in which `gin_files` names are looked up.
    print_fn: receives the progress lines, the eval table and the final JSON line.

  Gin's global configuration is cleared before and after the run, so calls do not leak into each
  other. Mistakes in the gin files or bindings raise `gin_utils.GinConfigError` with one line
  naming the problem.
  """
  import gin  # pylint: disable=import-outside-toplevel
  from flan_jax import gin_utils  # pylint: disable=import-outside-toplevel
  from flan_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  model_dir = Path(model_dir).expanduser().absolute()
  lines = [f"MODEL_DIR = {_gin_value(model_dir)}"]
  lines += [f"{key} = {_gin_value(value)}" for key, value in (bindings or {}).items()]
  gin.clear_config()
  try:
    gin_utils.parse_gin(list(gin_files), lines, gin_search_paths)
    try:
      train_lib.train(print_fn=print_fn)
    except (ValueError, TypeError, RuntimeError) as e:
      line = gin_utils.explain_missing_required(e)
      if line is None:
        raise
      raise gin_utils.GinConfigError(line) from None
  finally:
    gin.clear_config()
  return model_dir


def read_metrics(model_dir: str | Path,
                 subdir: str = "train") -> dict[str, list[tuple[int, float]]]:
  """Scalars a training run wrote to MODEL_DIR/<subdir> (TensorBoard events), by name.

  Returns {name: [(step, value), ...]} sorted by step, e.g. `read_metrics(d)["train/loss"]`;
  `subdir="eval"` gives the evaluation metrics (`eval/teacher_forced/loss`, per-task accuracy).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.core.util import event_pb2  # pylint: disable=import-outside-toplevel
  log_dir = Path(model_dir).expanduser() / subdir
  files = sorted(log_dir.glob("events.out.tfevents*"))
  if not files:
    raise FileNotFoundError(f"no TensorBoard event files in {log_dir}: is '{model_dir}' the "
                            f"MODEL_DIR of a training run (flan_jax.finetune / flan_jax.train)?")
  series: dict[str, dict[int, float]] = {}
  for file in files:
    for record in tf.data.TFRecordDataset(str(file)):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                  else float(value.simple_value))
        series.setdefault(value.tag, {})[int(event.step)] = number
  return {tag: sorted(points.items()) for tag, points in sorted(series.items())}
