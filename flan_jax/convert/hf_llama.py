"""Hugging Face Llama-family (LlamaForCausalLM: GQA, RoPE, SwiGLU, RMSNorm) ↔ flan_jax DecoderOnly.

HF keeps q/k projections in the "rotate halves" RoPE layout; flan_jax's RoPE uses the same layout
(see flan_jax/models/attention.py), so the kernels map by transpose and reshape alone.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from flan_jax.convert import hf_io
from flan_jax.convert import model_configs

_LAYER = "model.layers.{i}"
_TABLE = (
    ("model.embed_tokens.weight", "token_embedder/embedding", "copy"),
    ("model.norm.weight", "decoder/decoder_norm/scale", "copy"),
    (f"{_LAYER}.input_layernorm.weight", "decoder/layers_{i}/pre_self_attention_layer_norm/scale",
     "copy"),
    (f"{_LAYER}.post_attention_layernorm.weight", "decoder/layers_{i}/pre_mlp_layer_norm/scale",
     "copy"),
    (f"{_LAYER}.self_attn.q_proj.weight", "decoder/layers_{i}/self_attention/query/kernel", "in"),
    (f"{_LAYER}.self_attn.k_proj.weight", "decoder/layers_{i}/self_attention/key/kernel", "in"),
    (f"{_LAYER}.self_attn.v_proj.weight", "decoder/layers_{i}/self_attention/value/kernel", "in"),
    (f"{_LAYER}.self_attn.o_proj.weight", "decoder/layers_{i}/self_attention/out/kernel", "out"),
    (f"{_LAYER}.mlp.gate_proj.weight", "decoder/layers_{i}/mlp/wi_0/kernel", "in"),
    (f"{_LAYER}.mlp.up_proj.weight", "decoder/layers_{i}/mlp/wi_1/kernel", "in"),
    (f"{_LAYER}.mlp.down_proj.weight", "decoder/layers_{i}/mlp/wo/kernel", "in"),
)
_HEAD = ("lm_head.weight", "decoder/logits_dense/kernel", "in")
_IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def _rope_theta(hf: Mapping[str, Any]) -> float:
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"RoPE scaling '{rope.get('rope_type')}' is not supported; only plain RoPE")
  return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> Any:
  """A flan_jax DecoderConfig (Llama switches) for a HF Llama config.json."""
  if hf.get("model_type") not in ("llama",):
    raise ValueError(f"config.json model_type is '{hf.get('model_type')}'; the decoder-only "
                     f"converter handles 'llama'")
  if hf.get("attention_bias") or hf.get("mlp_bias"):
    raise ValueError("Llama checkpoints with attention/MLP biases are not supported (no biases)")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act '{hf.get('hidden_act')}' is not supported (SwiGLU uses silu)")
  heads = hf["num_attention_heads"]
  return model_configs.llama_config(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, d_ff=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"], rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=_rope_theta(hf), tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      **overrides)


def config_to_hf(config: Any) -> dict[str, Any]:
  """config.json for a Llama-style DecoderConfig; PaLM-style switches have no Llama equivalent."""
  palm_switches = [name for name in model_configs.PALM_SWITCHES if getattr(config, name)]
  if palm_switches:
    raise ValueError(f"the decoder config sets {palm_switches}, which LlamaForCausalLM cannot "
                     f"express; only Llama-style decoder configs export to Hugging Face")
  dims = model_configs.decoder_dims(config)
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": dims["vocab_size"], "hidden_size": dims["d_model"],
      "intermediate_size": dims["d_ff"], "num_attention_heads": dims["num_heads"],
      "num_key_value_heads": dims["num_kv_heads"], "head_dim": dims["head_dim"],
      "num_hidden_layers": dims["num_layers"], "rms_norm_eps": dims["rms_norm_eps"],
      "rope_theta": dims["rope_theta"], "rope_parameters": {"rope_type": "default",
                                                           "rope_theta": dims["rope_theta"]},
      "tie_word_embeddings": dims["tie_word_embeddings"], "hidden_act": "silu",
      "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 2048,
      "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
  }


def _table(config: Any) -> list[tuple[str, str, str]]:
  tied = model_configs.decoder_dims(config)["tie_word_embeddings"]
  return list(_TABLE) if tied else [*_TABLE, _HEAD]


def _num_layers(config: Any) -> dict[str, int]:
  return {"decoder": model_configs.decoder_dims(config)["num_layers"]}


def params_from_hf(state: Mapping[str, np.ndarray], config: Any, source: str) -> dict[str, np.ndarray]:
  """HF Llama tensors → flat unscanned flan_jax params."""
  ignored = _IGNORED
  if model_configs.decoder_dims(config)["tie_word_embeddings"]:
    ignored = (*ignored, r"lm_head\.weight")
  return hf_io.hf_to_flat(state, _table(config), _num_layers(config), ignored, source)


def params_to_hf(flat: Mapping[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
  return hf_io.flat_to_hf(flat, _table(config), _num_layers(config))
