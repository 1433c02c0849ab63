"""Attention for the T5 and decoder-only networks: multi-head / grouped-query attention with its
KV cache, relative-position bias, RoPE, and the masks (Flax linen, logical axis names).

Numerics as in `layers`: products through `mixed_einsum` (f32 accumulation); bias, mask and
softmax in float32.

RoPE uses the "rotate halves" convention of Hugging Face Llama: a head vector [x1, x2] (two halves)
becomes [x1*cos - x2*sin, x2*cos + x1*sin] with frequency i shared by dimensions i and i + d/2.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from flan_jax import reductions
from flan_jax.models.dropout import attention_dropout
from flan_jax.models.layers import (BATCHED_DOT_NAME, ENCODER_KV, DenseGeneral, as_dtype,
                                    default_kernel_init, mixed_einsum, mixed_einsum_bwd)

Array = jax.Array
_NEG_INF = -1e10


# ---- One-query decoding products over (chunked) keys and values -----------------------------------

# XLA:CPU's thunk executor gives ready operations to a second thread only when more than 8 are
# ready at once (`Thunk::ExecuteSession::kSplitThreshold`), and it runs a one-row batched product
# on the calling thread. One such product per chunk of at least this many chunks spreads a
# step's cross-attention over the cores.
_PARALLEL_CHUNKS = 16


def encoder_kv_chunks(rows: int) -> int:
  """How many chunks `split_encoder_kv` makes of `rows` (batch x kv_heads) rows: the smallest
  divisor of `rows` from 16 up, or every row apart when there are 10-15; none below 10 rows,
  where no split gets past the executor's threshold."""
  if rows < 10:
    return 1
  return next(d for d in range(min(_PARALLEL_CHUNKS, rows), rows + 1) if rows % d == 0)


def split_encoder_kv(encoder_kv: Any, batch_axis: int = 0, chunks: int | None = None) -> Any:
  """The `encoder_kv` collection with every key and value [.., batch, kv_heads, ...] (batch at
  `batch_axis`: 1 under a scanned layers axis) as a tuple of `chunks` arrays [.., rows, ...] over
  the batch x kv_heads rows (default `encoder_kv_chunks`). One-token steps read them with one
  product per chunk.

  On this 2-core CPU, Flan-T5-small greedy decoding (8 x 512 -> 128: 48 rows in 16 chunks) ran
  the cross-attention products on both cores: decodes 2.82 -> 2.64 s (interleaved medians of 16,
  paired ratio 0.96, the same tokens). Split once per decode, outside the loop: slicing whole
  arrays inside the step copied them at every step.
  """
  def split(x: Array) -> tuple[Array, ...]:
    rows = x.shape[batch_axis] * x.shape[batch_axis + 1]
    merged = x.reshape(*x.shape[:batch_axis], rows, *x.shape[batch_axis + 2:])
    return tuple(jnp.split(merged, chunks or encoder_kv_chunks(rows), axis=batch_axis))
  return jax.tree.map(split, encoder_kv)


def _one_query_products(spec: str, x: Array, operand: Array | tuple[Array, ...]) -> Array:
  """float32 einsum(spec, x [rows, ...], operand) in the operand's dtype, `operand` being
  [batch, kv_heads, ...] (merged into rows here: a reshape) or a tuple of row chunks from
  `split_encoder_kv` (one product per chunk, concatenated)."""
  if not isinstance(operand, tuple):
    operand = (operand.reshape(-1, *operand.shape[2:]),)
  parts = jnp.split(x, len(operand)) if len(operand) > 1 else [x]
  return jnp.concatenate([mixed_einsum(spec, part, chunk, chunk.dtype, BATCHED_DOT_NAME)
                          for part, chunk in zip(parts, operand)])


# ---- Scores: bias, mask, softmax ------------------------------------------------------------------

@jax.custom_vjp
def _add_bias_and_mask(logits: Array, bias: Array, mask: Array | None) -> Array:
  """logits + bias, and -1e10 where `mask` (bool, True attends) is False; bias has 1 or batch
  rows. The same as adding the bias and then masking with a select, with a faster forward and
  gradient on CPU.

  Forward: one addition that XLA:CPU fuses into the softmax after it, where the select needed a
  pass of its own over the float32 [batch, heads, q, k] logits (Flan-T5-small encoder, 8 × 512,
  interleaved: 0.786 → 0.727 s). The masked logits' cotangent is the softmax's, which is exactly
  zero there (their probabilities are), as after the select.

  Gradient of the bias: the cotangent summed over the batch when the bias is shared. XLA:CPU fused
  that reduction, the mask and the gather's transpose into one loop that read every layer's
  cotangent with a transposed access pattern: 3.0 s for the 8 encoder layers of T5-small at
  8 × 512, more than their attention matmuls. Summing the rows as a matrix-vector product
  (ones · cotangent) takes 0.14 s (both measured under load).
  """
  return _add_bias_and_mask_fwd(logits, bias, mask)[0]


def _add_bias_and_mask_fwd(logits: Array, bias: Array, mask: Array | None) -> tuple[Array, int]:
  bias_rows = bias.shape[0]
  if mask is not None:
    bias = bias + jnp.where(mask, 0.0, _NEG_INF)
  return logits + bias, bias_rows


def _add_bias_and_mask_bwd(bias_rows: int, grad: Array) -> tuple[Array, Array, None]:
  shared = bias_rows != grad.shape[0]
  return grad, reductions.sum_over(grad, 0, keepdims=True) if shared else grad, None


_add_bias_and_mask.defvjp(_add_bias_and_mask_fwd, _add_bias_and_mask_bwd)


@jax.custom_vjp
def _biased_softmax(logits: Array, bias: Array | None, mask: Array | None) -> Array:
  """softmax(logits + bias, masked) over the last axis, computed in float32, returned in logits' dtype.

  For low-precision (bf16) scores: plain autodiff would keep float32 residuals and cotangents of
  the [batch, heads, q, k] tensor between fusions. Here the only residual is the bf16 output,
  and the backward pass reads the bf16 probabilities and cotangent and writes a bf16 logits
  cotangent (plus the float32 bias gradient, summed over the batch when the bias is shared).
  `bias` (float32) has 1 or batch rows; `mask` is bool, True attends; both broadcast to logits.
  """
  return _biased_softmax_fwd(logits, bias, mask)[0]


def _biased_softmax_fwd(logits: Array, bias: Array | None,
                        mask: Array | None) -> tuple[Array, tuple[Array, Array | None]]:
  x = logits.astype(jnp.float32)
  if bias is not None:
    x = x + bias
  if mask is not None:
    x = jnp.where(mask, x, _NEG_INF)
  probs = jax.nn.softmax(x, axis=-1).astype(logits.dtype)
  return probs, (probs, bias)


def _biased_softmax_bwd(residuals: tuple[Array, Array | None],
                        grad: Array) -> tuple[Array, Array | None, None]:
  probs, bias = residuals
  p = probs.astype(jnp.float32)
  g = grad.astype(jnp.float32)
  dx = p * (g - jnp.sum(g * p, axis=-1, keepdims=True))
  dbias = None
  if bias is not None:
    dbias = dx if bias.shape[0] == dx.shape[0] else reductions.sum_over(dx, 0, keepdims=True)
    dbias = dbias.astype(bias.dtype)
  return dx.astype(probs.dtype), dbias, None


_biased_softmax.defvjp(_biased_softmax_fwd, _biased_softmax_bwd)


# ---- Position encodings ---------------------------------------------------------------------------

def relative_position_bucket(relative_position: Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucket of `memory_position - query_position`: exact for small distances, log-spaced up to
  `max_distance`; the bidirectional variant spends half the buckets on each direction."""
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = jnp.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe / max_exact) / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
  """One learned bias per (head, bucket): `rel_embedding` [heads, buckets] as in T5X."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """Float32 bias [1, heads, q, k] for 1-d integer positions."""
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                     ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), jnp.float32)
    relative = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(relative.astype(jnp.int32), bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets, max_distance=self.max_distance)
    return jnp.take(table, buckets, axis=1)[None]


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding (rotate-halves layout) of x [batch, length, heads, head_dim] at positions
  [batch, length]; computed in float32, returned in x's dtype."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (np.arange(0, half, dtype=np.float32) * 2.0 / x.shape[-1]))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, half]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# ---- Masks ----------------------------------------------------------------------------------------

def padding_mask(query_ok: Array, key_ok: Array) -> Array:
  """[batch, q, k] bool: both positions are real tokens."""
  return jnp.logical_and(query_ok[:, :, None], key_ok[:, None, :])


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """[batch, q, k] bool: query and key belong to the same packed example."""
  return query_segments[:, :, None] == key_segments[:, None, :]


def causal_mask(batch: int, length: int) -> Array:
  """[batch, length, length] bool: key position <= query position."""
  idx = jnp.arange(length)
  return jnp.broadcast_to(idx[None, :] <= idx[:, None], (batch, length, length))


# ---- Attention ------------------------------------------------------------------------------------

def probs_times_values(weights: Array, value: Array, dtype: Any) -> Array:
  """[batch, kv_heads, groups, q, k] weights · [batch, k, kv_heads, head_dim] values, f32 out."""
  return mixed_einsum("bkgqs,bskd->bqkgd", weights, value, dtype, BATCHED_DOT_NAME)


_VALUES_UNTRANSPOSED_SPEC = "bkgqs,bkds->bqkgd"


def probs_times_values_untransposed(weights: Array, value: Array, dtype: Any) -> Array:
  """`probs_times_values` for CPU: the backward products take the values as [batch, kv_heads,
  head_dim, k], the forward one as [batch, kv_heads, k, head_dim].

  Backward: the values' gradient then comes out of its product in that orientation, and XLA:CPU
  does not transpose the float32 [.., q, k] probabilities to compute it (see `layers._contract`):
  T5-small encoder attention forward + backward 432 → 409 ms (interleaved A/B, load 2.7).
  Forward: probabilities · heads-first values needs no transpose of the probabilities, where the
  [.., head_dim, k] values made XLA:CPU copy them (Flan-T5-small encoder, 8 × 512: 0.743 →
  0.726 s, training step unchanged; interleaved medians). Bit-identical either way. Keys stay
  [batch, k, kv_heads, head_dim] in the backward: XLA:CPU has no bf16 × bf16 → f32 kernel for
  the scores product with keys as [.., head_dim, k]. On TPU the plain form lays out better.
  """
  return checkpoint_name(_probs_times_values_cpu(weights.astype(dtype), value.astype(dtype)),
                         BATCHED_DOT_NAME)


@jax.custom_vjp
def _probs_times_values_cpu(weights: Array, value: Array) -> Array:
  out = jnp.einsum("bkgqs,bksd->bkgqd", weights, jnp.swapaxes(value, 1, 2),
                   preferred_element_type=jnp.float32)
  return jnp.transpose(out, (0, 3, 1, 2, 4))


def _probs_times_values_cpu_fwd(weights: Array, value: Array) -> tuple[Array, tuple[Array, Array]]:
  return _probs_times_values_cpu(weights, value), (weights, value)


def _probs_times_values_cpu_bwd(residuals: tuple[Array, Array],
                                grad: Array) -> tuple[Array, Array]:
  weights, value = residuals
  grad_weights, grad_value = mixed_einsum_bwd(
      _VALUES_UNTRANSPOSED_SPEC, (weights, jnp.transpose(value, (0, 2, 3, 1))), grad)
  return grad_weights, jnp.transpose(grad_value, (0, 3, 1, 2))


_probs_times_values_cpu.defvjp(_probs_times_values_cpu_fwd, _probs_times_values_cpu_bwd)


_SCORES_SPEC = "bqkgd,bskd->bkgqs"


def _scores_heads_first(query: Array, key: Array) -> Array:
  """The scores product with heads moved before positions in both operands first (CPU).

  Given query [batch, q, kv_heads, groups, head_dim] as it comes from the projection, XLA:CPU
  computed keys · queryᵀ and then transposed the float32 [batch, heads, k, q] result, a full copy
  of the largest tensor of the layer. Transposing the bf16 operands instead is cheap: Flan-T5-small
  encoder at 8 × 512, 0.778 → 0.726 s; greedy decode 8 × 512 → 128, 2.78 → 2.65 s (in-process
  interleaved medians of 5). The backward keeps the plain products (`_scores_bwd`): applied to
  its gradients too, this layout made the training step 5% slower.
  """
  return jnp.einsum("bkgqd,bksd->bkgqs", jnp.transpose(query, (0, 2, 3, 1, 4)),
                    jnp.swapaxes(key, 1, 2), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _scores(query: Array, key: Array) -> Array:
  """float32 [batch, kv_heads, groups, q, k] scores of query [batch, q, kv_heads, groups,
  head_dim] and key [batch, k, kv_heads, head_dim]; gradients as `mixed_einsum`'s."""
  return jax.lax.platform_dependent(
      query, key, cpu=_scores_heads_first,
      default=lambda q, k: jnp.einsum(_SCORES_SPEC, q, k, preferred_element_type=jnp.float32))


def _scores_fwd(query: Array, key: Array) -> tuple[Array, tuple[Array, Array]]:
  return _scores(query, key), (query, key)


def _scores_bwd(residuals: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
  return mixed_einsum_bwd(_SCORES_SPEC, residuals, grad)


_scores.defvjp(_scores_fwd, _scores_bwd)


class MultiHeadAttention(nn.Module):
  """Dot-product attention with num_kv_heads ≤ num_heads (MHA, GQA, or MQA when 1).

  `scale_logits=False` is T5's convention (the 1/sqrt(head_dim) lives in the query initializer);
  the decoder-only models scale explicitly. RoPE (`rope_theta`) assumes self-attention.
  With `decode=True` keys/values go to the `cache` collection (`cached_key`, `cached_value`
  [batch, kv_heads, cache_length, head_dim] and `cache_index` [batch]): the first
  (initializing) call sizes the cache and attends as in training; later calls take one token
  each, or, with `prefill=True`, a whole prompt written from position 0. The cache is created in
  the activation dtype; a caller may convert it (`BaseModel` keeps it in float32 on CPU), and the
  one-token products then run in the cache's dtype.

  The cache index is per row, so rows of one batch may hold prompts of different lengths
  (`prefill_lengths`): row r's next token goes to slot `cache_index[r]`, attends to slots
  <= that index, and takes that index as its RoPE position, exactly the teacher-forced layout.
  Slots a shorter prompt's padding filled during prefill are masked until generated tokens
  overwrite them.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: Any = jnp.bfloat16
  dropout_rate: float = 0.0
  scale_logits: bool = False
  rope_theta: float | None = None
  scores_dtype: Any = jnp.float32  # storage dtype of the [batch, heads, q, k] scores (see _attend)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, *, mask: Array | None = None,
               bias: Array | None = None, deterministic: bool = True, decode: bool = False,
               prefill: bool = False, prefill_lengths: Array | None = None,
               query_positions: Array | None = None,
               max_decode_length: int | None = None, encoder_kv: bool = False) -> Array:
    """Attention output [batch, q, embed].

    Args:
      inputs_q: [batch, q, embed] queries; inputs_kv: [batch, k, embed] keys/values.
      mask: bool [batch, q, k], True attends. Ignored by single-token decoding (causal over the
        cache); with prefill it covers the prompt.
      prefill_lengths: int [batch], with prefill: the number of real prompt tokens per row
        (default: all q); decoding continues at that slot.
      bias: float32 [1 or batch, heads, q, k] added to the logits; when decoding one token it
        spans the whole cache ([.., cache_length, cache_length]) and the current row is used.
      query_positions: [batch, q] positions for RoPE (default: arange, or from the cache index).
      max_decode_length: cache length, read by the initializing decode call (default: input length).
      encoder_kv: decoding cross-attention. The keys and values of `inputs_kv` (the encoder
        output, the same at every step) go to the `encoder_kv` collection, keys as [batch,
        kv_heads, head_dim, length] and values as [batch, kv_heads, length, head_dim]: written
        when the collection is mutable, read by one-token calls when it is not (see
        `_reads_encoder_kv` and `_encoder_kv_variables`). A caller may hand the reading calls
        the collection split into chunks of rows (`split_encoder_kv`).
    """
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads="
                       f"{self.num_kv_heads}; pick a divisor")
    kv_head_axis = "heads" if self.num_kv_heads == self.num_heads else None
    query_init = default_kernel_init(1.0 if self.scale_logits else self.head_dim ** -0.5)
    query = DenseGeneral((self.num_heads, self.head_dim), ("embed", "heads", "kv"),
                         dtype=self.dtype, kernel_init=query_init, name="query")(inputs_q)
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
    if encoder_kv and self._reads_encoder_kv(query.shape[1]):
      stored = [v.value for v in self._encoder_kv_variables(inputs_kv.shape[:2])]
      return self._output(inputs_q, self._attend_one_step(
          query, *stored, mask[:, 0], None, keys_transposed=True))
    kv_proj = functools.partial(DenseGeneral, (self.num_kv_heads, self.head_dim),
                                ("embed", kv_head_axis, "kv"), dtype=self.dtype)
    key = kv_proj(name="key")(inputs_kv)
    value = kv_proj(name="value")(inputs_kv)
    if encoder_kv and self.is_mutable_collection(ENCODER_KV):
      stored = self._encoder_kv_variables(inputs_kv.shape[:2])
      stored[0].value = jnp.transpose(key, (0, 2, 3, 1)).astype(stored[0].value.dtype)
      stored[1].value = jnp.swapaxes(value, 1, 2).astype(stored[1].value.dtype)
      if query.shape[1] == 1 and not self.is_initializing():
        return self._output(inputs_q, self._attend_one_step(
            query, stored[0].value, stored[1].value, mask[:, 0], None, keys_transposed=True))

    batch, q_len = query.shape[:2]
    stepping = decode and self.has_variable("cache", "cached_key")
    if stepping and not prefill and q_len != 1:
      raise ValueError(f"decode=True takes one token per call, got {q_len}; pass prefill=True to "
                       f"fill the cache from a whole prompt")
    if decode:
      # Heads before positions: the one-token step then reads the cache in the layout of its two
      # products, where [batch, cache, heads, head_dim] made XLA transpose the whole cache twice
      # per layer and step.
      cache_shape = (batch, self.num_kv_heads, max_decode_length or key.shape[1], self.head_dim)
      cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, self.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, self.dtype)
      # One entry per row (rows may be at different positions), so code that reorders cache rows
      # (beam search) treats every cache leaf alike, with or without a leading layers axis.
      cache_index = self.variable("cache", "cache_index", jnp.zeros, (batch,), jnp.int32)
    index = cache_index.value if stepping and not prefill else jnp.zeros((batch,), jnp.int32)
    if self.rope_theta is not None:
      if query_positions is None:
        query_positions = index[:, None] + jnp.arange(q_len)[None, :]
      query = apply_rope(query, query_positions, self.rope_theta)
      key = apply_rope(key, query_positions, self.rope_theta)

    if stepping and prefill:
      # The prompt attends to itself only (the rest of the cache is empty): no padded mask.
      write = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
          cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), 0, axis=2)
      cached_key.value = write(cached_key.value, key)
      cached_value.value = write(cached_value.value, value)
      cache_index.value = (jnp.full((batch,), q_len, jnp.int32) if prefill_lengths is None
                           else prefill_lengths.astype(jnp.int32))
      mask = causal_mask(batch, q_len) if mask is None else mask
    elif stepping:
      # Each row writes its new key/value at its own slot, in place (a select over the whole
      # cache read and wrote all of it every step).
      rows = jnp.arange(batch)
      write = lambda cache, new: cache.at[rows, :, index, :].set(
          new[:, 0].astype(cache.dtype), indices_are_sorted=True, unique_indices=True)
      cached_key.value = write(cached_key.value, key)
      cached_value.value = write(cached_value.value, value)
      cache_index.value = index + 1
      mask = jnp.arange(cached_key.value.shape[2])[None, :] <= index[:, None]  # [batch, cache]
      if bias is not None:  # each row's query row of the whole-cache bias
        bias = jnp.take_along_axis(bias, index[:, None, None, None], axis=-2)
      out = self._attend_one_step(query, cached_key.value, cached_value.value, mask, bias)
    if not stepping or prefill:
      out = self._attend(query, key, value, mask, bias, deterministic)
    return self._output(inputs_q, out)

  def _output(self, inputs_q: Array, out: Array) -> Array:
    return DenseGeneral((inputs_q.shape[-1],), ("heads", "kv", "embed"), num_in=2,
                        dtype=self.dtype, name="out")(out)

  def _encoder_kv_variables(self, batch_and_length: tuple[int, int]) -> list[nn.Variable]:
    """The `encoder_kv` keys [batch, kv_heads, head_dim, length] and values [batch, kv_heads,
    length, head_dim] (created as zeros in the activation dtype; a caller may convert them, as it
    may the cache).

    Keys with head_dim before length make each step's scores a sum of head_dim rows along the
    encoder positions rather than one dot product of length head_dim per position. XLA:CPU's
    one-query product over them, Flan-T5-small's 8 layers at 8 × 512 inputs in float32, took
    2.7–2.8 instead of 3.2 ms per step alone; decodes 3.38 → 3.27 s (interleaved medians of 21).
    """
    batch, length = batch_and_length
    return [self.variable(ENCODER_KV, "cached_key", jnp.zeros,
                          (batch, self.num_kv_heads, self.head_dim, length), self.dtype),
            self.variable(ENCODER_KV, "cached_value", jnp.zeros,
                          (batch, self.num_kv_heads, length, self.head_dim), self.dtype)]

  def _reads_encoder_kv(self, q_len: int) -> bool:
    """Whether this cross-attention call reads its keys and values from `encoder_kv`: a
    one-token decoding step after the call that wrote them.

    Written once per decode, they are stored in the layout and dtype of the one-token products.
    Projected in every step instead, XLA hoisted the projection out of the loop but kept its
    [batch, length, heads, head_dim] layout, which the products then read strided: in
    Flan-T5-small greedy decoding (8 x 512 -> 128, 2-core CPU) the two cross-attention
    products took 5.8 ms of a step before and 4.6 ms after (profiled), and decodes went
    2.85 / 2.77 / 2.85 s -> 2.69 / 2.74 / 2.76 s (interleaved runs).
    """
    return (q_len == 1 and self.has_variable(ENCODER_KV, "cached_key")
            and not self.is_mutable_collection(ENCODER_KV))

  def _attend_one_step(self, query: Array, cached_key: Array, cached_value: Array, mask: Array,
                       bias: Array | None, keys_transposed: bool = False) -> Array:
    """One query per row against the cache: query [batch, 1, heads, head_dim], cache
    [batch, kv_heads, cache, head_dim] (keys [batch, kv_heads, head_dim, cache] if
    `keys_transposed`), or those split by `split_encoder_kv`; mask bool [batch, cache], bias
    [batch, heads, 1, cache].

    Both products run in the cache's dtype with float32 accumulation. XLA:CPU computes these
    one-row products with its own loop emitter, in float32 only: a bf16 cache was converted to a
    float32 copy (and the cache copied) every step, where a float32 cache is read as it is.
    """
    batch, cache_length = mask.shape
    groups = self.num_heads // self.num_kv_heads
    rows = batch * self.num_kv_heads
    if self.scale_logits:
      query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
    query = query.reshape(rows, groups, self.head_dim)
    key_spec = "nds" if keys_transposed else "nsd"
    logits = _one_query_products(f"ngd,{key_spec}->ngs", query, cached_key)
    if bias is not None:
      logits = logits + bias.reshape(rows, groups, cache_length)
    mask = jnp.broadcast_to(mask[:, None, :], (batch, self.num_kv_heads, cache_length))
    logits = jnp.where(mask.reshape(rows, 1, cache_length), logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    out = _one_query_products("ngs,nsd->ngd", weights, cached_value)
    return out.astype(self.dtype).reshape(batch, 1, self.num_heads, self.head_dim)

  def _attend(self, query: Array, key: Array, value: Array, mask: Array | None,
              bias: Array | None, deterministic: bool) -> Array:
    """softmax(q·k + bias, masked) · v, grouped so kv heads are never materialized per query head.

    Not `jax.nn.dot_product_attention`: with implementation=None (jax 0.10) it is this same
    einsum-softmax-einsum graph with no fused kernel on CPU or TPU, it cannot drop attention
    weights (T5 training does, dropout_rate 0.05 for Flan), its probs·v product runs bf16 → bf16
    (3× slower than f32 accumulation on this CPU) and its backward products take float32
    cotangents. Measured at T5-small encoder shape (8 × 512, 6 heads), forward + backward:
    0.78 s here vs 0.92 s for jax.nn.dot_product_attention (2-core CPU under load).

    `scores_dtype` bfloat16 stores the scores and probabilities in bf16 (the q·k product still
    accumulates in f32; bias, mask and softmax run in f32 inside `_biased_softmax`), halving the
    HBM traffic of the largest tensors of a long-sequence training step. For TPU: on this CPU,
    bf16 outputs are slower than f32 ones.
    """
    batch, q_len = query.shape[:2]
    k_len = key.shape[1]
    groups = self.num_heads // self.num_kv_heads
    if self.scale_logits:
      query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
    query = query.reshape(batch, q_len, self.num_kv_heads, groups, self.head_dim)
    logits = checkpoint_name(_scores(query.astype(self.dtype), key.astype(self.dtype)),
                             BATCHED_DOT_NAME)
    if bias is not None:
      bias = bias.reshape(bias.shape[0], self.num_kv_heads, groups, q_len, k_len)
    if mask is not None:
      mask = mask[:, None, None]
    if as_dtype(self.scores_dtype) != jnp.float32:
      weights = _biased_softmax(logits.astype(self.scores_dtype), bias, mask)
    else:
      if bias is not None:
        logits = _add_bias_and_mask(logits, bias, mask)
      elif mask is not None:
        logits = jnp.where(mask, logits, _NEG_INF)
      weights = jax.nn.softmax(logits, axis=-1)
    if not deterministic and self.dropout_rate > 0:
      weights = attention_dropout(weights, self.dropout_rate, self.make_rng("dropout"))
    out = jax.lax.platform_dependent(
        weights, value, cpu=functools.partial(probs_times_values_untransposed, dtype=self.dtype),
        default=functools.partial(probs_times_values, dtype=self.dtype)).astype(self.dtype)
    out = out.reshape(batch, q_len, self.num_heads, self.head_dim)
    return nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
