"""Conversions between T5X / Hugging Face checkpoints and flan_jax model directories.

Each `load_*` returns `(family, config, params, vocab_path, step)` with params as the nested
flan_jax tree (numpy, fitted to the network built from `config`); each `*_to_flax` writes that
into a model directory (flan_jax/model_dir.py) and `flax_to_hf` writes a HF directory back.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from flan_jax import model_dir
from flan_jax.convert import hf_io, hf_llama, hf_t5, model_configs, t5x
from flan_jax.convert import params as params_lib

_HF_FAMILIES = {"t5": ("t5", hf_t5), "llama": ("decoder", hf_llama)}
_TOKENIZER_NAME = {"t5": "spiece.model", "decoder": "tokenizer.model"}


class Loaded(NamedTuple):
  family: str  # 't5' | 'decoder'
  config: Any  # T5Config | DecoderConfig
  params: dict[str, Any]
  vocab_path: Path | None
  step: int


def _config_with(config: Any, overrides: dict[str, Any]) -> Any:
  return dataclasses.replace(config, **overrides) if overrides else config


def load_t5x(path: str | Path, config: Any = None, vocab_path: str | Path | None = None,
             **overrides: Any) -> Loaded:
  """Reads a T5X checkpoint (any layout); infers the T5Config from shapes when none is given.

  `overrides` are T5Config fields (e.g. dtype='float32', scan_layers=True).
  """
  ckpt = t5x.read_checkpoint(path, with_optimizer_state=False)
  if not ckpt.params:
    raise ValueError(f"T5X checkpoint '{path}' holds no model parameters (optimizer.target is "
                     f"empty)")
  flat = {k: np.asarray(v) for k, v in params_lib.flatten(ckpt.params).items()}
  if config is None:
    config = model_configs.t5_config(**model_configs.infer_t5_dims(flat), **overrides)
  else:
    config = _config_with(config, overrides)
  params = params_lib.fit_params(flat, params_lib.network_param_shapes("t5", config),
                                 f"T5X checkpoint '{path}'")
  return Loaded("t5", config, params, Path(vocab_path) if vocab_path else None, ckpt.step)


def load_hf(path: str | Path, *, allow_pickle: bool = False, vocab_path: str | Path | None = None,
            **overrides: Any) -> Loaded:
  """Reads a HF T5 / Llama directory; `overrides` are flan_jax config fields."""
  hf_config = hf_io.read_config(path)
  model_type = hf_config.get("model_type")
  if model_type not in _HF_FAMILIES:
    raise ValueError(f"'{path}': HF model_type '{model_type}' is not supported (t5, llama)")
  family, mapping = _HF_FAMILIES[model_type]
  config = mapping.config_from_hf(hf_config, **overrides)
  state = hf_io.read_state_dict(path, allow_pickle=allow_pickle)
  source = f"Hugging Face checkpoint '{path}'"
  flat = mapping.params_from_hf(state, config, source)
  params = params_lib.fit_params(flat, params_lib.network_param_shapes(family, config), source)
  vocab = Path(vocab_path) if vocab_path else hf_io.find_tokenizer_model(path)
  return Loaded(family, config, params, vocab, 0)


def load_flax(path: str | Path, step: int | None = None) -> Loaded:
  """Reads a flan_jax model directory (params as numpy)."""
  from flan_jax.models import config_from_dict  # pylint: disable=import-outside-toplevel
  spec = model_dir.read_spec(path)
  step = model_dir.latest_step(path) if step is None else step
  params = model_dir.restore_params(path, step)
  vocab = Path(path) / spec.vocabulary
  return Loaded(spec.family, config_from_dict(spec.family, spec.config),
                jax.tree.map(np.asarray, params), vocab if vocab.exists() else None, step or 0)


def save_flax(loaded: Loaded, output: str | Path, vocab_path: str | Path | None = None) -> Path:
  """Writes a model directory: model_spec.json, vocab/spiece.model and checkpoints/<step>/params."""
  vocab = vocab_path or loaded.vocab_path
  if vocab is None:
    raise ValueError("the source carries no SentencePiece model: pass --vocab PATH/spiece.model")
  output = Path(output)
  model_dir.write_spec(output, loaded.family, loaded.config, vocab)
  model_dir.save_params(output, loaded.step, loaded.params)
  return output


def save_hf(loaded: Loaded, output: str | Path) -> Path:
  """Writes a HF directory (config.json, model.safetensors, tokenizer model) for T5 or Llama."""
  flat = params_lib.unstack_layers(params_lib.flatten(loaded.params))
  if loaded.family == "t5":
    hf_config, state = hf_t5.config_to_hf(loaded.config), hf_t5.params_to_hf(flat, loaded.config)
  else:
    hf_config = hf_llama.config_to_hf(loaded.config)
    state = hf_llama.params_to_hf(flat, loaded.config)
  hf_io.write_checkpoint(output, hf_config, state, loaded.vocab_path, _TOKENIZER_NAME[loaded.family])
  return Path(output)


def t5x_to_flax(source: str | Path, output: str | Path, *, config: Any = None,
                vocab_path: str | Path | None = None, **overrides: Any) -> Path:
  return save_flax(load_t5x(source, config, vocab_path, **overrides), output)


def hf_to_flax(source: str | Path, output: str | Path, *, allow_pickle: bool = False,
               vocab_path: str | Path | None = None, **overrides: Any) -> Path:
  return save_flax(load_hf(source, allow_pickle=allow_pickle, vocab_path=vocab_path, **overrides),
                   output)


def flax_to_hf(source: str | Path, output: str | Path, step: int | None = None) -> Path:
  return save_hf(load_flax(source, step), output)
