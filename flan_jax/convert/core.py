"""Conversions between T5X / Hugging Face checkpoints and flan_jax model directories.

Each `load_*` returns `(family, config, params, vocab_path, step)` with params as the nested
flan_jax tree (numpy, fitted to the network built from `config`); each `*_to_flax` writes that
into a model directory (flan_jax/model_dir.py) and `flax_to_hf` writes a HF directory back.
`load_t5x(..., with_optimizer_state=True)` also maps T5X's Adafactor state onto the optax state
of `flan_jax.optim.adafactor` (see adafactor_state.py); `save_flax` then writes a training
checkpoint (params, opt_state, data_iter) that `flan_jax.train` resumes from.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from flan_jax import model_dir
from flan_jax.convert import adafactor_state, hf_io, hf_llama, hf_t5, model_configs, t5x
from flan_jax.convert import params as params_lib

_HF_FAMILIES = {"t5": ("t5", hf_t5), "llama": ("decoder", hf_llama)}
_TOKENIZER_NAME = {"t5": "spiece.model", "decoder": "tokenizer.model"}


class Loaded(NamedTuple):
  family: str  # 't5' | 'decoder'
  config: Any  # T5Config | DecoderConfig
  params: dict[str, Any]
  vocab_path: Path | None
  step: int
  opt_state: Any = None  # optax state (numpy) when the optimizer state was imported
  opt_report: str = ""  # how each statistic was mapped (adafactor_state.ImportedState.summary)


def _config_with(config: Any, overrides: dict[str, Any]) -> Any:
  return dataclasses.replace(config, **overrides) if overrides else config


def load_t5x(path: str | Path, config: Any = None, vocab_path: str | Path | None = None, *,
             with_optimizer_state: bool = False, optimizer: Any = None,
             param_scan_axis: int = t5x.T5X_PARAM_SCAN_AXIS, **overrides: Any) -> Loaded:
  """Reads a T5X checkpoint (any layout); infers the T5Config from shapes when none is given.

  Args:
    path: T5X checkpoint file, step folder, or a folder of step folders.
    config: T5Config; None infers it from the parameter shapes.
    vocab_path: SentencePiece model to record with the params.
    with_optimizer_state: also map T5X's Adafactor state onto `optimizer`'s optax state.
    optimizer: `flan_jax.optim.Optimizer` whose state to fill (default `optim.adafactor()`, as
      gin configures it); it must be the optimizer training will resume with.
    param_scan_axis: layer axis of a scanned T5X checkpoint (`encoder/layers/...`).
    **overrides: T5Config fields (e.g. dtype='float32', scan_layers=True).
  """
  ckpt = t5x.read_checkpoint(path, with_optimizer_state=with_optimizer_state)
  if not ckpt.params:
    raise ValueError(f"T5X checkpoint '{path}' holds no model parameters (optimizer.target is "
                     f"empty)")
  raw = {k: np.asarray(v) for k, v in params_lib.flatten(ckpt.params).items()}
  flat = t5x.unscan(raw, param_scan_axis)
  if config is None:
    config = model_configs.t5_config(**model_configs.infer_t5_dims(flat), **overrides)
  else:
    config = _config_with(config, overrides)
  params = params_lib.fit_params(flat, params_lib.network_param_shapes("t5", config),
                                 f"T5X checkpoint '{path}'")
  loaded = Loaded("t5", config, params, Path(vocab_path) if vocab_path else None, ckpt.step)
  if not with_optimizer_state:
    return loaded
  if not ckpt.param_states:
    raise ValueError(f"T5X checkpoint '{path}' holds no optimizer state (state.param_states); "
                     f"convert it without --with_optimizer_state")
  if optimizer is None:
    from flan_jax import optim  # pylint: disable=import-outside-toplevel
    optimizer = optim.adafactor()
  moments, momenta = adafactor_state.read_moments(
      ckpt.param_states, {k: v.shape for k, v in raw.items()}, param_scan_axis)
  imported = adafactor_state.build_state(optimizer.tx, params, ckpt.step, moments, momenta)
  return loaded._replace(opt_state=imported.opt_state, opt_report=imported.summary())


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


def load_flax(path: str | Path, step: int | None = None, *,
              with_optimizer_state: bool = False) -> Loaded:
  """Reads a flan_jax model directory (params, and the training `opt_state` if asked, as numpy)."""
  from flan_jax.models import config_from_dict  # pylint: disable=import-outside-toplevel
  spec = model_dir.read_spec(path)
  step = model_dir.latest_step(path) if step is None else step
  params = model_dir.restore_params(path, step)
  vocab = Path(path) / spec.vocabulary
  opt_state = _restore_opt_state(path, step) if with_optimizer_state else None
  return Loaded(spec.family, config_from_dict(spec.family, spec.config),
                jax.tree.map(np.asarray, params), vocab if vocab.exists() else None, step or 0,
                opt_state)


def _restore_opt_state(path: str | Path, step: int | None) -> Any:
  """The `opt_state` item as Orbax restores it without a target (lists and dicts of numpy)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  if step is None or not (Path(path) / model_dir.CHECKPOINTS_DIR / str(step) / "opt_state").is_dir():
    raise ValueError(f"'{path}' step {step} holds no optimizer state (opt_state): it is not a "
                     f"training checkpoint; export it without --with_optimizer_state")
  with model_dir.checkpoint_manager(path, read_only=True) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(opt_state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, restored["opt_state"])


def save_flax(loaded: Loaded, output: str | Path, vocab_path: str | Path | None = None) -> Path:
  """Writes a model directory: model_spec.json, vocab/spiece.model and checkpoints/<step>/params.

  With an imported optimizer state the step is a training checkpoint (`opt_state` and a fresh
  `data_iter` too, see flan_jax/checkpoints.py): training with MODEL_DIR=output resumes there.
  """
  vocab = vocab_path or loaded.vocab_path
  if vocab is None:
    raise ValueError("the source carries no SentencePiece model: pass --vocab PATH/spiece.model")
  output = Path(output)
  model_dir.write_spec(output, loaded.family, loaded.config, vocab)
  if loaded.opt_state is None:
    model_dir.save_params(output, loaded.step, loaded.params)
    return output
  from flan_jax import checkpoints, trainer  # pylint: disable=import-outside-toplevel
  ckpt = checkpoints.Checkpointer(output, keep=None, async_save=False)
  try:
    state = trainer.TrainState(step=np.asarray(loaded.step, np.int32), params=loaded.params,
                               opt_state=loaded.opt_state)
    ckpt.save(state, {"batches": 0, "first_step": loaded.step})
  finally:
    ckpt.close()
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


def save_t5x(loaded: Loaded, output: str | Path, *, scanned: bool = False,
             param_scan_axis: int = t5x.T5X_PARAM_SCAN_AXIS, min_dim_size_to_factor: int = 128
             ) -> Path:
  """Writes `output/checkpoint_<step>/` in T5X's legacy layout: the model, the step, and the
  Adafactor state when `loaded.opt_state` holds one (unscanned only; factored as T5X's heuristic
  does with `min_dim_size_to_factor`)."""
  if loaded.family != "t5":
    raise ValueError("T5X export is for T5 (encoder-decoder) models; export decoder-only models "
                     "to Hugging Face (flax-to-hf)")
  flat = params_lib.flatten(loaded.params)
  t5x_flat = t5x.to_t5x_layout(flat, scanned, param_scan_axis)
  states = None
  if loaded.opt_state is not None:
    if scanned:
      raise ValueError("T5X's scanned layout factors its optimizer state by logical axis rules "
                       "flan_jax does not know; export the optimizer state unscanned (drop "
                       "--t5x_scan_layers) or export the model only")
    states, _ = adafactor_state.export_param_states(
        loaded.opt_state, flat, {k: v.shape for k, v in t5x_flat.items()}, min_dim_size_to_factor)
  return t5x.write_legacy(output, t5x_flat, loaded.step, states)


def t5x_to_flax(source: str | Path, output: str | Path, *, config: Any = None,
                vocab_path: str | Path | None = None, **options: Any) -> Path:
  """`load_t5x` (options: with_optimizer_state, optimizer, param_scan_axis, config fields) + save."""
  return save_flax(load_t5x(source, config, vocab_path, **options), output)


def hf_to_flax(source: str | Path, output: str | Path, *, allow_pickle: bool = False,
               vocab_path: str | Path | None = None, **overrides: Any) -> Path:
  return save_flax(load_hf(source, allow_pickle=allow_pickle, vocab_path=vocab_path, **overrides),
                   output)


def flax_to_hf(source: str | Path, output: str | Path, step: int | None = None) -> Path:
  return save_hf(load_flax(source, step), output)


def flax_to_t5x(source: str | Path, output: str | Path, step: int | None = None, *,
                with_optimizer_state: bool = False, **options: Any) -> Path:
  """`save_t5x(load_flax(...), output, **options)` (options: scanned, param_scan_axis,
  min_dim_size_to_factor)."""
  return save_t5x(load_flax(source, step, with_optimizer_state=with_optimizer_state), output,
                  **options)
