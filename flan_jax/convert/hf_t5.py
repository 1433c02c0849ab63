"""Hugging Face T5 / Flan-T5 (T5ForConditionalGeneration, v1.1 gated-GELU, untied) ↔ flan_jax T5.

transformers 5 always ties `lm_head` to `shared` on T5 configs unless the checkpoint holds both
with different values, so export writes `lm_head.weight` explicitly and `tie_word_embeddings:
false` (the Flan-T5 layout), which older and newer transformers load untied alike.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from flan_jax.convert import hf_io
from flan_jax.convert import model_configs

_ATTENTION = (("q", "query", "in"), ("k", "key", "in"), ("v", "value", "in"), ("o", "out", "out"))
_MLP = (("wi_0", "wi_0", "in"), ("wi_1", "wi_1", "in"), ("wo", "wo", "in"))


def _table() -> list[tuple[str, str, str]]:
  enc, dec = "encoder.block.{i}.layer", "decoder.block.{i}.layer"
  rows = [
      ("shared.weight", "token_embedder/embedding", "copy"),
      ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
       "encoder/relpos_bias/rel_embedding", "transpose"),
      ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
       "decoder/relpos_bias/rel_embedding", "transpose"),
      ("encoder.final_layer_norm.weight", "encoder/encoder_norm/scale", "copy"),
      ("decoder.final_layer_norm.weight", "decoder/decoder_norm/scale", "copy"),
      ("lm_head.weight", "decoder/logits_dense/kernel", "in"),
      (f"{enc}.0.layer_norm.weight", "encoder/layers_{i}/pre_attention_layer_norm/scale", "copy"),
      (f"{enc}.1.layer_norm.weight", "encoder/layers_{i}/pre_mlp_layer_norm/scale", "copy"),
      (f"{dec}.0.layer_norm.weight", "decoder/layers_{i}/pre_self_attention_layer_norm/scale", "copy"),
      (f"{dec}.1.layer_norm.weight", "decoder/layers_{i}/pre_cross_attention_layer_norm/scale",
       "copy"),
      (f"{dec}.2.layer_norm.weight", "decoder/layers_{i}/pre_mlp_layer_norm/scale", "copy"),
  ]
  for hf, flax, kind in _ATTENTION:
    rows.append((f"{enc}.0.SelfAttention.{hf}.weight", f"encoder/layers_{{i}}/attention/{flax}/kernel",
                 kind))
    rows.append((f"{dec}.0.SelfAttention.{hf}.weight",
                 f"decoder/layers_{{i}}/self_attention/{flax}/kernel", kind))
    rows.append((f"{dec}.1.EncDecAttention.{hf}.weight",
                 f"decoder/layers_{{i}}/encoder_decoder_attention/{flax}/kernel", kind))
  for hf, flax, kind in _MLP:
    rows.append((f"{enc}.1.DenseReluDense.{hf}.weight", f"encoder/layers_{{i}}/mlp/{flax}/kernel", kind))
    rows.append((f"{dec}.2.DenseReluDense.{hf}.weight", f"decoder/layers_{{i}}/mlp/{flax}/kernel", kind))
  return rows


# Tied copies of `shared.weight` that some HF checkpoints also store.
_IGNORED = (r"encoder\.embed_tokens\.weight", r"decoder\.embed_tokens\.weight")


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> Any:
  """A flan_jax T5Config for a HF T5 config.json (v1.1 / Flan-T5 only)."""
  if hf.get("model_type") != "t5":
    raise ValueError(f"config.json model_type is '{hf.get('model_type')}', not 't5'")
  if hf.get("feed_forward_proj", "relu") != "gated-gelu":
    raise ValueError(f"feed_forward_proj '{hf.get('feed_forward_proj')}' is not supported: "
                     f"flan_jax's T5 is v1.1 (gated-gelu); T5 v1.0 (relu) checkpoints do not convert")
  return model_configs.t5_config(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_heads=hf["num_heads"],
      head_dim=hf["d_kv"], d_ff=hf["d_ff"], num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6), **overrides)


def config_to_hf(config: Any) -> dict[str, Any]:
  dims = model_configs.t5_dims(config)
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": dims["vocab_size"], "d_model": dims["d_model"], "d_kv": dims["head_dim"],
      "d_ff": dims["d_ff"], "num_heads": dims["num_heads"], "num_layers": dims["num_encoder_layers"],
      "num_decoder_layers": dims["num_decoder_layers"],
      "relative_attention_num_buckets": dims["relative_attention_num_buckets"],
      "relative_attention_max_distance": dims["relative_attention_max_distance"],
      "layer_norm_epsilon": dims["layer_norm_epsilon"], "feed_forward_proj": "gated-gelu",
      "dense_act_fn": "gelu_new", "is_gated_act": True, "is_encoder_decoder": True,
      "tie_word_embeddings": False, "dropout_rate": 0.0, "initializer_factor": 1.0,
      "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "use_cache": True,
      "torch_dtype": "float32",
  }


def _num_layers(config: Any) -> dict[str, int]:
  dims = model_configs.t5_dims(config)
  return {"encoder": dims["num_encoder_layers"], "decoder": dims["num_decoder_layers"]}


def params_from_hf(state: Mapping[str, np.ndarray], config: Any, source: str) -> dict[str, np.ndarray]:
  """HF T5 tensors → flat unscanned flan_jax params."""
  state = dict(state)
  if "lm_head.weight" not in state:
    raise ValueError(f"{source} has no lm_head.weight: it is a tied-embedding (T5 v1.0 style) "
                     f"checkpoint; flan_jax's T5 v1.1 needs the untied output layer")
  return hf_io.hf_to_flat(state, _table(), _num_layers(config), _IGNORED, source)


def params_to_hf(flat: Mapping[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
  """Flat unscanned flan_jax params → HF T5 tensors (incl. lm_head.weight)."""
  return hf_io.flat_to_hf(flat, _table(), _num_layers(config))
