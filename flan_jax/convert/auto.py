"""`load_any`: one entry for flan_jax model directories, Hugging Face directories and T5X checkpoints."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flan_jax import model_dir
from flan_jax.convert import core, hf_io, t5x


def detect_format(path: str | Path) -> str:
  """'flax', 'hf' or 't5x' for a checkpoint path; a clear error otherwise."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint '{path}' does not exist")
  if (path / model_dir.SPEC_FILE).is_file():
    return "flax"
  if hf_io.is_hf_dir(path):
    return "hf"
  if t5x.detect_layout(path) is not None:
    return "t5x"
  raise ValueError(f"'{path}' is not a checkpoint flan_jax can load: expected a flan_jax model dir "
                   f"({model_dir.SPEC_FILE}), a Hugging Face dir ({hf_io.CONFIG_FILE}) or a T5X "
                   f"checkpoint (legacy msgpack file or a folder with a 'checkpoint' index)")


def load_any(path: str | Path, *, vocab_path: str | Path | None = None,
             allow_pickle: bool = False, **overrides: Any) -> tuple[model_dir.ModelSpec, Any]:
  """Loads any supported checkpoint as `(spec, params)`.

  The spec's `vocabulary` is an absolute path (the model dir's, the HF tokenizer model, or
  `vocab_path`; for T5X without `vocab_path`, the default T5 vocabulary). `overrides` are config
  fields (e.g. dtype='float32'); for a flan_jax dir they replace the saved config's values.
  """
  fmt = detect_format(path)
  if fmt == "flax":
    loaded = core.load_flax(path)
    if overrides:
      loaded = loaded._replace(config=dataclasses.replace(loaded.config, **overrides))
  elif fmt == "hf":
    loaded = core.load_hf(path, allow_pickle=allow_pickle, vocab_path=vocab_path, **overrides)
  else:
    loaded = core.load_t5x(path, vocab_path=vocab_path, **overrides)
  vocab = vocab_path or loaded.vocab_path or (_default_t5_vocab() if loaded.family == "t5" else None)
  if vocab is None:
    raise ValueError(f"'{path}' carries no SentencePiece model: pass vocab_path=")
  spec = model_dir.ModelSpec(family=loaded.family, config=dataclasses.asdict(loaded.config),
                             vocabulary=str(Path(vocab).resolve()))
  return spec, loaded.params


def _default_t5_vocab() -> str:
  from flan_jax.data import vocab  # pylint: disable=import-outside-toplevel
  return vocab.t5_vocabulary().sentencepiece_model_file
