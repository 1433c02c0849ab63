"""Model wrappers: one interface (loss, score, predict, initial variables) over both networks.

`EncoderDecoderModel` wraps `t5.Transformer` (seqio EncDecFeatureConverter batches);
`DecoderOnlyModel` wraps `decoder.DecoderOnly` (seqio PrefixLMFeatureConverter batches).
Parameters passed in are plain (unboxed) arrays; `get_initial_variables` returns the boxed
(`nn.Partitioned`) tree so callers can derive shardings from the logical axis names.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from flan_jax import decoding
from flan_jax.models import attention, layers

Batch = Mapping[str, Any]
LOSS_NORMALIZATIONS = ("num_real_target_tokens", "num_total_target_tokens", "per_sequence")
DECODE_METHODS = ("greedy", "sample", "beam")


def cross_entropy_with_z_loss(logits: jax.Array, targets: jax.Array, *, z_loss: float = 1e-4,
                              label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-token cross entropy (incl. z-loss) and the z-loss part alone, both float32 [...].

  z-loss = z_loss * logsumexp(logits)^2 keeps the softmax normalizer near 1 (PaLM). With label
  smoothing the target distribution puts 1 - label_smoothing on the target and spreads the rest
  evenly; its entropy is subtracted so a perfect prediction still has loss 0.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  # A masked sum rather than take_along_axis: its gradient is a fused select, not a scatter into a
  # zeroed [batch, length, vocab] array (with argmax_last below, loss + accuracy forward and
  # backward at 8 × 128 × 32,128: 152 → 118 ms on this CPU, same values).
  is_target = jnp.arange(vocab, dtype=targets.dtype) == targets[..., None]
  target_log_prob = jnp.sum(jnp.where(is_target, log_probs, 0.0), axis=-1)
  if label_smoothing > 0.0:
    on, off = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    entropy = -(on * np.log(on) + (vocab - 1) * off * np.log(off + 1e-20))
    cross_entropy = -(on - off) * target_log_prob - off * jnp.sum(log_probs, axis=-1) - entropy
  else:
    cross_entropy = -target_log_prob
  z = z_loss * jnp.square(log_z)
  return cross_entropy + z, z


def normalize_loss(token_loss: jax.Array, weights: jax.Array, mode: str | float,
                   segment_ids: jax.Array | None = None) -> jax.Array:
  """Reduces a weighted per-token loss [batch, length] to a scalar.

  Modes: 'num_real_target_tokens' (sum / sum of weights: the mean over real target tokens),
  'num_total_target_tokens' (sum / batch * length), 'per_sequence' (each sequence's token mean,
  averaged over sequences; packed sequences count separately when `segment_ids` is given), or a
  float constant (sum / constant).
  """
  weighted = token_loss * weights
  if isinstance(mode, (int, float)) and not isinstance(mode, bool):
    return jnp.sum(weighted) / float(mode)
  if mode == "num_real_target_tokens":
    return jnp.sum(weighted) / jnp.maximum(jnp.sum(weights), 1e-9)
  if mode == "num_total_target_tokens":
    return jnp.sum(weighted) / np.prod(token_loss.shape)
  if mode == "per_sequence":
    if segment_ids is None:
      segment_ids = (weights > 0).astype(jnp.int32)
    # Segment s of row b: one-hot over segment ids (0 is padding and ignored).
    onehot = jax.nn.one_hot(segment_ids, token_loss.shape[1] + 1)[..., 1:] * (weights > 0)[..., None]
    sums = jnp.einsum("bl,bls->bs", weighted, onehot)
    counts = jnp.einsum("bl,bls->bs", weights, onehot)
    present = counts > 0
    means = jnp.where(present, sums / jnp.maximum(counts, 1e-9), 0.0)
    return jnp.sum(means) / jnp.maximum(jnp.sum(present), 1)
  raise ValueError(f"unknown loss normalization {mode!r}; use one of {LOSS_NORMALIZATIONS} "
                   f"or a float constant")


# XLA:CPU options for the program `predict_batch` compiles when the parameters live on CPU. By
# default XLA:CPU hands YNNPACK each product together with the elementwise ops and reductions
# around it (softmax, layer-norm sums), as one fusion; with only the products in YNNPACK and the
# rest in XLA's own loops, Flan-T5-small greedy decodes (8 × 512 → 128, 2-core CPU) took 3.27 →
# 3.20 s and 2.93 → 2.85 s (interleaved medians of 21 and 15). Tokens may differ in near ties
# (the sums run in another order).
CPU_PREDICT_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def params_on_cpu(params: Any) -> bool:
  """Whether the parameters live on CPU (the default backend's answer for traced or host ones)."""
  leaves = jax.tree.leaves(params)
  if leaves and isinstance(leaves[0], jax.Array) and not isinstance(leaves[0], jax.core.Tracer):
    platforms = {device.platform for device in leaves[0].devices()}
  else:
    platforms = {jax.default_backend()}
  return platforms == {"cpu"}


class DecodeLayout(NamedTuple):
  """How a decode lays out its state for the platform of its parameters (static under jit)."""
  cache_dtype: str | None = None  # keys and values (cache, encoder_kv); None: the activation dtype
  split_encoder_kv: bool = False  # cross-attention keys and values as row chunks


# On CPU the one-token attention products of a step run in float32 anyway (see
# `attention.MultiHeadAttention._attend_one_step`): a float32 cache spares a converted copy of it
# per layer and step (Flan-T5-small greedy, 8 × 512 → 128 on this 2-core CPU, with the in-place
# cache write: 3.39–3.66 → 3.23–3.40 s in interleaved runs). Elsewhere the bf16 cache halves its
# memory. The cross-attention keys and values are split into chunks of rows so that their
# products run on both cores (`attention.split_encoder_kv`).
CPU_DECODE_LAYOUT = DecodeLayout(cache_dtype="float32", split_encoder_kv=True)


class _DecodeSetup(NamedTuple):
  cache: Any                           # for batch * rows_per_input rows
  tokens_to_logits: decoding.TokensToLogits
  initial_logits: jax.Array | None = None  # [rows, vocab] step-0 logits, computed before the loop


class BaseModel(abc.ABC):
  """Shared loss / score / predict logic; subclasses define the network calls."""

  module: nn.Module
  feature_converter_cls: type[seqio.FeatureConverter]

  def __init__(self, config: Any, vocabulary: seqio.Vocabulary, *, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalization: str | float = "num_real_target_tokens"):
    if not (isinstance(loss_normalization, (int, float)) or loss_normalization in LOSS_NORMALIZATIONS):
      raise ValueError(f"unknown loss normalization {loss_normalization!r}; use one of "
                       f"{LOSS_NORMALIZATIONS} or a float constant")
    self.config = config
    self.vocabulary = vocabulary
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalization = loss_normalization
    self.module = self._make_module(config)
    # temperature, topp and alpha are traced: one compilation per shape serves all their values.
    static = ("decode_method", "num_decodes", "max_decode_length", "topk", "beam_size", "layout")
    self._predict_jit = jax.jit(self._predict, static_argnames=static)
    self._predict_jit_cpu = jax.jit(self._predict, static_argnames=static,
                                    compiler_options=CPU_PREDICT_COMPILER_OPTIONS)
    self._score_jit = jax.jit(self._score)

  @property
  def eos_id(self) -> int:
    return self.vocabulary.eos_id

  # Network-specific parts ------------------------------------------------------------------------
  @abc.abstractmethod
  def _make_module(self, config: Any) -> nn.Module:
    """The Flax network for `config`."""

  @abc.abstractmethod
  def _logits(self, params: Any, batch: Batch, dropout_rng: jax.Array | None) -> jax.Array:
    """Teacher-forced float32 logits [batch, length, vocab] for the batch's targets."""

  @abc.abstractmethod
  def _decoding_setup(self, params: Any, batch: Batch, rows_per_input: int,
                      max_decode_length: int, layout: DecodeLayout) -> _DecodeSetup:
    """Cache (laid out as `layout` says) and callback for decoding `rows_per_input` sequences
    per batch row."""

  def _empty_cache(self, *args: jax.Array, cache_dtype: str | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """The zero decoding collections a decode=True call on these inputs creates (`cache`, and
    `encoder_kv` for cross-attention): shapes from `jax.eval_shape` (nothing is initialized or
    run), then zeros; keys and values in `cache_dtype` if given."""
    shapes = jax.eval_shape(lambda *a: self.module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)
    def zeros(s):
      floating = jnp.issubdtype(s.dtype, jnp.floating)
      return jnp.zeros(s.shape, cache_dtype if cache_dtype and floating else s.dtype)
    return {name: jax.tree.map(zeros, shapes[name]) for name in ("cache", layers.ENCODER_KV)
            if name in shapes}

  @abc.abstractmethod
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]],
                            input_types: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{'params': boxed parameters} for batches of the given feature shapes."""

  @abc.abstractmethod
  def make_batch(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None,
                 input_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Unpacked model features (as the feature converter makes them) from token ids."""

  # Interface ------------------------------------------------------------------------------------
  def loss_fn(self, params: Any, batch: Batch,
              dropout_rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher-forced loss; dropout is on only when `dropout_rng` is given."""
    logits = self._logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = jnp.asarray(weights, jnp.float32)
    token_loss, token_z = cross_entropy_with_z_loss(
        logits, targets, z_loss=self.z_loss, label_smoothing=self.label_smoothing)
    loss = normalize_loss(token_loss, weights, self.loss_normalization,
                          batch.get("decoder_segment_ids"))
    num_tokens = jnp.sum(weights)
    denom = jnp.maximum(num_tokens, 1e-9)
    correct = (decoding.argmax_last(logits) == targets).astype(jnp.float32)
    metrics = {
        "loss": jnp.sum(token_loss * weights) / denom,
        "z_loss": jnp.sum(token_z * weights) / denom,
        "accuracy": jnp.sum(correct * weights) / denom,
        "num_tokens": num_tokens,
    }
    return loss, metrics

  def _score(self, params: Any, batch: Batch) -> jax.Array:
    logits = self._logits(params, batch, None)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token * jnp.asarray(weights, jnp.float32), axis=-1)

  def score_batch(self, params: Any, batch: Batch) -> jax.Array:
    """Per-example sum of target log-likelihoods (EOS included): float32 [batch]."""
    return self._score_jit(params, dict(batch))

  def predict_batch(self, params: Any, batch: Batch, rng: jax.Array | None = None, *,
                    decode_method: str = "greedy", num_decodes: int = 1,
                    max_decode_length: int | None = None, temperature: float = 1.0, topk: int = 0,
                    topp: float = 0.0, beam_size: int = 4, alpha: float = 0.6) -> jax.Array:
    """Decodes the batch: int32 [batch, length], or [batch, num_decodes, length] if num_decodes > 1.

    'greedy' is argmax; 'sample' draws with temperature / top-k / top-p (rng defaults to key 0);
    'beam' returns the best `num_decodes` of `beam_size` beams, scored with length penalty
    `alpha`. `max_decode_length` defaults to the batch's target length.
    """
    if decode_method not in DECODE_METHODS:
      raise ValueError(f"unknown decode method {decode_method!r}; use one of {DECODE_METHODS}")
    if decode_method == "sample" and temperature <= 0:
      raise ValueError(f"temperature must be > 0 for decode_method='sample' (got {temperature}); "
                       f"use decode_method='greedy' for argmax decoding")
    if decode_method == "beam" and num_decodes > beam_size:
      raise ValueError(f"num_decodes={num_decodes} exceeds beam_size={beam_size}; raise beam_size")
    if max_decode_length is None:
      max_decode_length = int(batch["decoder_target_tokens"].shape[1])
    rng = jax.random.PRNGKey(0) if rng is None else rng
    on_cpu = params_on_cpu(params)
    predict = self._predict_jit_cpu if on_cpu else self._predict_jit
    out = predict(
        params, dict(batch), rng, decode_method=decode_method, num_decodes=num_decodes,
        max_decode_length=max_decode_length, temperature=jnp.float32(temperature), topk=int(topk),
        topp=jnp.float32(topp), beam_size=int(beam_size), alpha=jnp.float32(alpha),
        layout=CPU_DECODE_LAYOUT if on_cpu else DecodeLayout())
    return out[:, 0] if num_decodes == 1 else out

  def _predict(self, params, batch, rng, *, decode_method, num_decodes, max_decode_length,
               temperature, topk, topp, beam_size, alpha, layout) -> jax.Array:
    rows_per_input = beam_size if decode_method == "beam" else num_decodes
    batch_size = next(iter(batch.values())).shape[0]
    setup = self._decoding_setup(params, batch, rows_per_input, max_decode_length, layout)
    if decode_method == "beam":
      seqs, _ = decoding.beam_search(
          setup.tokens_to_logits, setup.cache, batch=batch_size, beam_size=beam_size,
          length=max_decode_length, eos_id=self.eos_id, alpha=alpha,
          initial_logits=setup.initial_logits, cache_batch_axis=self._cache_batch_axis())
      return seqs[:, :num_decodes]
    seqs, _ = decoding.temperature_sample(
        setup.tokens_to_logits, setup.cache, rows=batch_size * num_decodes,
        length=max_decode_length, eos_id=self.eos_id, rng=rng,
        temperature=0.0 if decode_method == "greedy" else temperature, topk=topk, topp=topp,
        initial_logits=setup.initial_logits)
    return seqs.reshape(batch_size, num_decodes, max_decode_length)

  def _cache_batch_axis(self) -> int:
    """Stacked (scanned) layers put the layer axis in front of the batch in cache leaves."""
    return 1 if getattr(self.config, "scan_layers", False) else 0

  def _dropout(self, dropout_rng: jax.Array | None) -> tuple[bool, dict[str, jax.Array]]:
    return dropout_rng is not None, ({} if dropout_rng is None else {"dropout": dropout_rng})


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """Right-pads (with 0) or truncates each row to `length`: int32 [len(rows), length]."""
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    row = list(row)[:length]
    out[i, :len(row)] = row
  return out


def _decoder_features(targets: np.ndarray) -> dict[str, np.ndarray]:
  """decoder_target_tokens, the right-shifted decoder_input_tokens and non-padding loss weights."""
  inputs = np.zeros_like(targets)
  inputs[:, 1:] = targets[:, :-1]
  return {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


class EncoderDecoderModel(BaseModel):
  """T5 / Flan-T5 encoder-decoder wrapper (seqio EncDecFeatureConverter batches)."""

  feature_converter_cls = seqio.EncDecFeatureConverter

  def _make_module(self, config):
    from flan_jax.models import t5  # pylint: disable=import-outside-toplevel
    return t5.Transformer(config)

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]],
                            input_types: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Variables (boxed params) from input shapes; needs encoder_input_tokens, decoder_input_tokens."""
    types = dict(input_types or {})
    enc = jnp.ones(input_shapes["encoder_input_tokens"], types.get("encoder_input_tokens", jnp.int32))
    dec_shape = input_shapes.get("decoder_input_tokens", input_shapes.get("decoder_target_tokens"))
    dec = jnp.ones(dec_shape, types.get("decoder_input_tokens", jnp.int32))
    variables = self.module.init({"params": rng, "dropout": rng}, enc, dec, dec, enable_dropout=False)
    return {"params": variables["params"]}

  def make_batch(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None,
                 input_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Unpacked EncDecFeatureConverter features from token ids (EOS already appended).

    Without targets the decoder features are zeros of `target_length` (for prediction).
    """
    batch = {"encoder_input_tokens": _pad(inputs, input_length)}
    batch.update(_decoder_features(_pad(targets or [[]] * len(inputs), target_length)))
    return batch

  def _logits(self, params, batch, dropout_rng):
    enable_dropout, rngs = self._dropout(dropout_rng)
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        encoder_positions=batch.get("encoder_positions"),
        decoder_positions=batch.get("decoder_positions"), enable_dropout=enable_dropout, rngs=rngs)

  def _decoding_setup(self, params, batch, rows_per_input, max_decode_length, layout):
    enc_tokens = decoding.repeat_rows(batch["encoder_input_tokens"], rows_per_input)
    rows = enc_tokens.shape[0]
    dummy = jnp.ones((rows, max_decode_length), jnp.int32)
    collections = self._empty_cache(enc_tokens, dummy, dummy, cache_dtype=layout.cache_dtype,
                                    enable_dropout=False, decode=True)
    # Encode once per input, then repeat: the encoder output does not depend on the sample.
    encoded = self.module.apply({"params": params}, batch["encoder_input_tokens"],
                                enable_dropout=False, method=self.module.encode)
    encoded = decoding.repeat_rows(encoded, rows_per_input)

    def step(variables, tokens, mutable):
      logits, variables = self.module.apply(
          {"params": params, **variables}, encoded, enc_tokens, tokens, tokens,
          enable_dropout=False, decode=True, max_decode_length=max_decode_length,
          method=self.module.decode, mutable=mutable)
      return logits[:, -1, :], variables

    # Step 0 (the BOS token) runs here, before the loop: it also writes every layer's
    # cross-attention keys and values, which the loop's steps then only read.
    first_logits, variables = step(collections, jnp.zeros((rows, 1), jnp.int32),
                                   ["cache", layers.ENCODER_KV])
    encoder_kv = variables[layers.ENCODER_KV]
    if layout.split_encoder_kv:
      encoder_kv = attention.split_encoder_kv(encoder_kv, batch_axis=self._cache_batch_axis())

    def tokens_to_logits(state: decoding.DecodingState):
      logits, variables = step({"cache": state.cache, layers.ENCODER_KV: encoder_kv},
                               state.cur_token, ["cache"])
      return logits, variables["cache"]
    return _DecodeSetup(variables["cache"], tokens_to_logits, first_logits)


class DecoderOnlyModel(BaseModel):
  """PaLM / Llama-style decoder-only wrapper (seqio PrefixLMFeatureConverter batches).

  Prediction runs every row's prompt (BOS + the `inputs` part of `decoder_target_tokens`, see
  `_prompt_lengths`) through the network in one prefill call, with the prompt attention the model
  was trained with (bidirectional prefix unless the config sets `bidirectional_prefix=False`), then
  generates up to `max_decode_length` tokens after it; the returned
  tokens are the generated ones only.
  """

  feature_converter_cls = seqio.PrefixLMFeatureConverter

  def _make_module(self, config):
    from flan_jax.models import decoder  # pylint: disable=import-outside-toplevel
    return decoder.DecoderOnly(config)

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]],
                            input_types: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Variables (boxed params) from input shapes; needs decoder_input_tokens."""
    types = dict(input_types or {})
    shape = input_shapes.get("decoder_input_tokens", input_shapes.get("decoder_target_tokens"))
    dec = jnp.ones(shape, types.get("decoder_input_tokens", jnp.int32))
    variables = self.module.init({"params": rng, "dropout": rng}, dec, dec, enable_dropout=False)
    return {"params": variables["params"]}

  def make_batch(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None,
                 input_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Unpacked PrefixLMFeatureConverter features: inputs then targets in one sequence of
    input_length + target_length tokens, loss on the targets only; without targets, the prompts
    alone in input_length + 1 tokens (predict_batch appends room for the generated tokens; the one
    extra slot keeps a prompt that fills input_length whole, since the causal-attention mask marks
    the prompt plus the first target position)."""
    inputs = [list(x[:input_length]) for x in inputs]
    length = input_length + (1 if targets is None else target_length)
    targets = [[]] * len(inputs) if targets is None else targets
    rows = [x + list(t) for x, t in zip(inputs, targets)]
    batch = _decoder_features(_pad(rows, length))
    positions = np.arange(length)[None]
    prompt = np.array([len(x) for x in inputs])[:, None]
    batch["decoder_causal_attention"] = (positions < prompt + 1).astype(np.int32)
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"] * (positions >= prompt)
    return batch

  def _logits(self, params, batch, dropout_rng):
    enable_dropout, rngs = self._dropout(dropout_rng)
    return self.module.apply(
        {"params": params}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        decoder_positions=batch.get("decoder_positions"),
        decoder_causal_attention=batch.get("decoder_causal_attention"),
        enable_dropout=enable_dropout, rngs=rngs)

  def _decoding_setup(self, params, batch, rows_per_input, max_decode_length, layout):
    # Rows keep their prompts right-padded and their own cache index (see
    # attention.MultiHeadAttention): positions and cache slots are then those of training, with no
    # per-row offsets to carry, which left-padding would need.
    targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
    width = targets.shape[1]
    fed_lengths = _prompt_lengths(batch) + 1  # BOS, then the prompt
    in_prompt = jnp.arange(width)[None, :] < fed_lengths[:, None]
    fed = jnp.where(in_prompt, jnp.pad(targets[:, :-1], ((0, 0), (1, 0))), 0)
    length = width + max_decode_length
    cache = self._empty_cache(jnp.zeros((targets.shape[0], length), jnp.int32),
                              cache_dtype=layout.cache_dtype, enable_dropout=False,
                              decode=True)["cache"]
    logits, variables = self.module.apply(
        {"params": params, "cache": cache}, fed, decoder_causal_attention=in_prompt,
        enable_dropout=False, decode=True, prefill=True, prefill_lengths=fed_lengths,
        mutable=["cache"])
    last = jnp.take_along_axis(logits, (fed_lengths - 1)[:, None, None], axis=1)[:, 0]
    axis = self._cache_batch_axis()
    cache = jax.tree.map(lambda x: jnp.repeat(x, rows_per_input, axis=axis), variables["cache"])

    def tokens_to_logits(state: decoding.DecodingState):
      logits, variables = self.module.apply(
          {"params": params, "cache": state.cache}, state.cur_token, enable_dropout=False,
          decode=True, mutable=["cache"])
      return logits[:, -1, :], variables["cache"]
    return _DecodeSetup(cache, tokens_to_logits, decoding.repeat_rows(last, rows_per_input))


def _prompt_lengths(batch: Batch) -> jax.Array:
  """Number of prompt tokens per row: the `inputs` part (decoder_causal_attention covers it plus
  the first target position, which the shift makes the last prompt token's prediction)."""
  causal = batch.get("decoder_causal_attention")
  if causal is None:
    raise ValueError("decoder-only prediction needs 'decoder_causal_attention' in the batch (the "
                     "PrefixLMFeatureConverter adds it) to know where each prompt ends")
  return jnp.maximum(jnp.sum(jnp.asarray(causal, jnp.int32), axis=-1) - 1, 0)


MODELS = {"t5": EncoderDecoderModel, "decoder": DecoderOnlyModel}
