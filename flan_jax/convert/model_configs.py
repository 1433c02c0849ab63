"""The one place that knows flan_jax's config field names on behalf of the converters.

Converters speak in architecture dimensions (d_model, num_heads, head_dim, d_ff, ...); this
module turns them into `T5Config` / `DecoderConfig` objects and back, and infers T5 dimensions
from a T5X parameter tree's shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flan_jax.convert import params as params_lib

# Architecture dimension → T5Config field.
_T5_FIELDS = {
    "vocab_size": "vocab_size", "d_model": "emb_dim", "num_heads": "num_heads",
    "head_dim": "head_dim", "d_ff": "mlp_dim", "num_encoder_layers": "num_encoder_layers",
    "num_decoder_layers": "num_decoder_layers",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "layer_norm_epsilon": "layer_norm_epsilon",
}
# Architecture dimension → DecoderConfig field.
_DECODER_FIELDS = {
    "vocab_size": "vocab_size", "d_model": "emb_dim", "num_heads": "num_heads",
    "num_kv_heads": "num_kv_heads", "head_dim": "head_dim", "d_ff": "mlp_dim",
    "num_layers": "num_layers", "rms_norm_eps": "layer_norm_epsilon", "rope_theta": "rope_theta",
    "tie_word_embeddings": "logits_via_embedding",
}
# DecoderConfig switches that make the Llama block (sequential, untied or tied head, no biases).
_LLAMA_SWITCHES = {"parallel_block": False, "scale_tied_logits": False, "bidirectional_prefix": False}
# DecoderConfig switches a Llama checkpoint cannot express.
PALM_SWITCHES = ("parallel_block", "scale_tied_logits")


def _build(cls: type, fields: Mapping[str, str], dims: Mapping[str, Any],
           overrides: Mapping[str, Any]) -> Any:
  known = {f.name for f in dataclasses.fields(cls)}
  values = {fields[k]: v for k, v in dims.items() if fields[k] in known}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"{cls.__name__} has no fields {unknown}")
  return cls(**{**values, **overrides})


def t5_config(**dims_and_overrides: Any) -> Any:
  """T5Config from architecture dims; other keyword arguments are T5Config fields (e.g. dtype)."""
  from flan_jax.models.configs import T5Config  # pylint: disable=import-outside-toplevel
  dims = {k: v for k, v in dims_and_overrides.items() if k in _T5_FIELDS}
  overrides = {k: v for k, v in dims_and_overrides.items() if k not in _T5_FIELDS}
  return _build(T5Config, _T5_FIELDS, dims, overrides)


def t5_dims(config: Any) -> dict[str, Any]:
  return {dim: getattr(config, field, _T5_DEFAULTS.get(dim)) for dim, field in _T5_FIELDS.items()}


_T5_DEFAULTS = {"relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "layer_norm_epsilon": 1e-6}


def llama_config(**dims_and_overrides: Any) -> Any:
  """DecoderConfig with the Llama switches from architecture dims (+ DecoderConfig overrides)."""
  from flan_jax.models.configs import DecoderConfig  # pylint: disable=import-outside-toplevel
  dims = {k: v for k, v in dims_and_overrides.items() if k in _DECODER_FIELDS}
  overrides = {**_LLAMA_SWITCHES,
               **{k: v for k, v in dims_and_overrides.items() if k not in _DECODER_FIELDS}}
  return _build(DecoderConfig, _DECODER_FIELDS, dims, overrides)


def decoder_dims(config: Any) -> dict[str, Any]:
  return {dim: getattr(config, field) for dim, field in _DECODER_FIELDS.items()}


def infer_t5_dims(flat: Mapping[str, Any]) -> dict[str, Any]:
  """T5 dimensions from unscanned T5X params (shapes only); raises when they are not a T5 v1.1."""
  def shape(name: str) -> tuple[int, ...]:
    if name not in flat:
      raise ValueError(f"cannot infer the T5 config: the checkpoint has no parameter {name} "
                       f"(is it a T5 v1.1 model?); pass --gin_file with the model config")
    return tuple(flat[name].shape)
  vocab_size, d_model = shape("token_embedder/embedding")
  num_heads, buckets = shape("encoder/relpos_bias/rel_embedding")
  query = shape("encoder/layers_0/attention/query/kernel")
  head_dim = (int(_prod(query)) // d_model) // num_heads
  if "encoder/layers_0/mlp/wi_0/kernel" not in flat:
    raise ValueError("the checkpoint's MLP has no wi_0/wi_1 (not gated): T5 v1.0 checkpoints are "
                     "not supported, flan_jax's T5 is v1.1")
  shape("decoder/logits_dense/kernel")
  return {
      "vocab_size": vocab_size, "d_model": d_model, "num_heads": num_heads, "head_dim": head_dim,
      "d_ff": shape("encoder/layers_0/mlp/wi_0/kernel")[-1],
      "num_encoder_layers": params_lib.count_layers(flat, "encoder"),
      "num_decoder_layers": params_lib.count_layers(flat, "decoder"),
      "relative_attention_num_buckets": buckets,
  }


def _prod(shape: tuple[int, ...]) -> int:
  out = 1
  for n in shape:
    out *= n
  return out
