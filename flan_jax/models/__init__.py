"""Networks (t5, decoder), their configs, and the wrappers built from a config or a model directory."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flan_jax.model_dir import ModelSpec

if TYPE_CHECKING:
  import seqio


def _config_class(family: str) -> type:
  from flan_jax.models import configs  # pylint: disable=import-outside-toplevel
  return configs.T5Config if family == "t5" else configs.DecoderConfig


def config_from_dict(family: str, values: dict[str, Any]) -> Any:
  """Rebuilds a T5Config / DecoderConfig from its JSON form (model_spec.json's `config`)."""
  cls = _config_class(family)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"model_spec.json config has fields {unknown} that {cls.__name__} does not "
                     f"know; the model directory was written by another flan_jax version")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return cls(**kwargs)


def build_model_from_config(config: Any, vocabulary: seqio.Vocabulary, **options: Any) -> Any:
  """The wrapper for a config: EncoderDecoderModel for a T5Config, DecoderOnlyModel otherwise.

  `options` go to the wrapper (z_loss, label_smoothing, loss_normalization).
  """
  from flan_jax.models import model  # pylint: disable=import-outside-toplevel
  family = "t5" if isinstance(config, _config_class("t5")) else "decoder"
  return model.MODELS[family](config, vocabulary, **options)


def build_model(spec: ModelSpec, model_dir: str | Path | None = None, **options: Any) -> Any:
  """The wrapper described by a model directory's spec (`model_dir.read_spec`).

  The spec's vocabulary path is relative to `model_dir` when given, else to the working directory.
  """
  vocab_path = Path(spec.vocabulary)
  if model_dir is not None and not vocab_path.is_absolute():
    vocab_path = Path(model_dir) / vocab_path
  if not vocab_path.exists():
    raise FileNotFoundError(f"vocabulary {vocab_path} named by model_spec.json is missing; copy the "
                            f"SentencePiece model there (model_dir.write_spec does)")
  import seqio  # pylint: disable=import-outside-toplevel  (TensorFlow: only when a model is built)
  vocabulary = seqio.SentencePieceVocabulary(str(vocab_path), extra_ids=spec.extra_ids)
  return build_model_from_config(config_from_dict(spec.family, spec.config), vocabulary, **options)
