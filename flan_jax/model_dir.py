"""On-disk layout of a model directory, shared by training, conversion and inference.

    MODEL_DIR/
      model_spec.json          {"family": "t5" | "decoder", "config": {...}, "vocabulary": "vocab/spiece.model", "extra_ids": 100}
      vocab/spiece.model       the SentencePiece model the checkpoint was trained with
      config.gin               (training runs) the resolved gin config
      checkpoints/<step>/      Orbax CheckpointManager steps; item `params` always present,
                               training adds `opt_state`, `data_iter`, ...

A training run's MODEL_DIR and a converted checkpoint have the same shape, so everything that
loads a model (`flan_jax.infer`, `flan_jax.eval`, the Python API) takes either.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

SPEC_FILE = "model_spec.json"
CHECKPOINTS_DIR = "checkpoints"
VOCAB_FILE = "vocab/spiece.model"
FAMILIES = ("t5", "decoder")


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URL (`gs://bucket/run`, `s3://...`): a path etils.epath reads, not the local disk."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """A local path made absolute, or a cloud URL (`gs://...`) kept intact.

  `pathlib.Path("gs://b/run")` collapses the scheme to `gs:/b/run`, so every MODEL_DIR goes
  through here: training on a TPU VM writes straight to a bucket.
  """
  return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What is needed to rebuild the network and its vocabulary from a model directory."""
  family: str
  config: dict[str, Any]
  vocabulary: str = VOCAB_FILE
  extra_ids: int = 100

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"model family '{self.family}' is not one of {FAMILIES}")


def write_spec(model_dir: str | Path, family: str, config: Any, vocab_path: str | Path,
               extra_ids: int = 100) -> ModelSpec:
  """Writes model_spec.json and copies the vocabulary into MODEL_DIR/vocab/."""
  model_dir = as_path(model_dir)
  config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
  spec = ModelSpec(family=family, config=_jsonable(config_dict), extra_ids=extra_ids)
  (model_dir / VOCAB_FILE).parent.mkdir(parents=True, exist_ok=True)
  if as_path(vocab_path) != model_dir / VOCAB_FILE:
    (model_dir / VOCAB_FILE).write_bytes(as_path(vocab_path).read_bytes())
  (model_dir / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
  return spec


def read_spec(model_dir: str | Path) -> ModelSpec:
  path = as_path(model_dir) / SPEC_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: '{model_dir}' is not a flan_jax model directory. Train into it with "
        f"`python -m flan_jax.train` or create it with `python -m flan_jax.convert`.")
  return ModelSpec(**json.loads(path.read_text()))


def vocab_path(model_dir: str | Path) -> epath.Path:
  return as_path(model_dir) / read_spec(model_dir).vocabulary


def checkpoint_manager(model_dir: str | Path, **options: Any) -> ocp.CheckpointManager:
  """The Orbax manager over MODEL_DIR/checkpoints (options go to CheckpointManagerOptions)."""
  return ocp.CheckpointManager(
      as_path(model_dir) / CHECKPOINTS_DIR, options=ocp.CheckpointManagerOptions(**options))


# Spelled out in full: Orbax warns for each read-only option it has to fill in itself.
_READ_ONLY = {"read_only": True, "save_interval_steps": 0, "create": False}


class _DropReadOnlyNotice(logging.Filter):
  """Orbax warns 'Given directory is read only' on every read-only open, i.e. on every model load."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_DropReadOnlyNotice())


def latest_step(model_dir: str | Path) -> int | None:
  with checkpoint_manager(model_dir, **_READ_ONLY) as manager:
    return manager.latest_step()


def save_params(model_dir: str | Path, step: int, params: Any) -> None:
  """Saves a parameter-only checkpoint (conversions, exports)."""
  with checkpoint_manager(model_dir) as manager:
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    manager.wait_until_finished()


def restore_params(model_dir: str | Path, step: int | None = None, target: Any = None) -> Any:
  """Restores the `params` item of a step (default: latest).

  `target` is a pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays; without it the
  arrays come back as saved, on the default device.
  """
  with checkpoint_manager(model_dir, **_READ_ONLY) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {as_path(model_dir) / CHECKPOINTS_DIR}")
    if target is not None:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  return restored["params"]


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)
