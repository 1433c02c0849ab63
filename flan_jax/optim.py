"""Optimizers (Adafactor as in Flan Table 22, AdamW) and learning-rate schedules, gin-configurable.

An `Optimizer` carries the optax transformation and its schedule, so the trainer can report the
learning rate of every step without reading it back from the optimizer state.

    train.optimizer = @optim.adafactor()
    optim.adafactor.learning_rate = @optim.constant_schedule()
    optim.constant_schedule.value = 5e-4
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flan_jax import reductions

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class Optimizer:
  tx: optax.GradientTransformation
  learning_rate: Schedule


@gin.configurable(module="optim")
def constant_schedule(value: float = 5e-4, warmup_steps: int = 0) -> Schedule:
  """Constant rate, with an optional linear warmup from 0."""
  if warmup_steps <= 0:
    return optax.constant_schedule(value)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, value, warmup_steps), optax.constant_schedule(value)], [warmup_steps])


@gin.configurable(module="optim")
def rsqrt_schedule(base: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """T5 pre-training's inverse square root: base / sqrt(max(step, warmup_steps))."""
  def schedule(step):
    return base * jnp.reciprocal(jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps)))
  return schedule


@gin.configurable(module="optim")
def cosine_schedule(peak: float = 1e-3, decay_steps: int = 10_000, warmup_steps: int = 0,
                    end_value: float = 0.0) -> Schedule:
  """Linear warmup to `peak`, then cosine decay to `end_value` at `decay_steps` (total)."""
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, decay_steps, end_value)


def _with_clipping(tx: optax.GradientTransformation, max_grad_norm: float | None):
  return tx if max_grad_norm is None else optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)


def factored_dims(shape: tuple[int, ...], factored: bool = True,
                  min_dim_size_to_factor: int = 128) -> tuple[int, int] | None:
  """(d1, d0): the second-largest and largest axes, which Adafactor factors (optax's rule, ties in
  axis order); None when the smaller of them is below `min_dim_size_to_factor`."""
  if not factored or len(shape) < 2:
    return None
  order = np.argsort(shape)
  return (int(order[-2]), int(order[-1])) if shape[order[-2]] >= min_dim_size_to_factor else None


def _mean_over(x: jax.Array, axis: int) -> jax.Array:
  """x.mean(axis) through `reductions.sum_over` (a matrix-vector product on CPU)."""
  return reductions.sum_over(x, axis) / x.shape[axis]


def scale_by_factored_rms(factored: bool = True, decay_rate: float = 0.8,
                          min_dim_size_to_factor: int = 128,
                          epsilon: float = 1e-30) -> optax.GradientTransformation:
  """`optax.scale_by_factored_rms` (same state, same update) with CPU-friendly row/column means.

  The state is optax's `FactoredState` (what `flan_jax.convert.adafactor_state` reads and writes)
  and the update is optax's formula; only the means over non-minor axes go through `_mean_over`,
  so results agree with optax to float32 rounding (tests/test_optim.py).
  """
  reference = optax.scale_by_factored_rms(factored=factored, decay_rate=decay_rate,
                                          min_dim_size_to_factor=min_dim_size_to_factor,
                                          epsilon=epsilon)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("Adafactor needs the parameters (their dtype and shape) in update()")
    decay = 1.0 - jnp.asarray(state.count + 1, jnp.float32) ** -decay_rate

    def one(grad, v_row, v_col, v, param):
      placeholder = jnp.zeros((1,), param.dtype)
      grad_sqr = jnp.square(grad) + epsilon
      dims = factored_dims(param.shape, factored, min_dim_size_to_factor)
      if dims is None:
        new_v = (decay * v + (1.0 - decay) * grad_sqr).astype(param.dtype)
        return grad * jax.lax.rsqrt(new_v), placeholder, placeholder, new_v
      d1, d0 = dims
      new_v_row = (decay * v_row + (1.0 - decay) * _mean_over(grad_sqr, d0)).astype(param.dtype)
      new_v_col = (decay * v_col + (1.0 - decay) * _mean_over(grad_sqr, d1)).astype(param.dtype)
      row_col_mean = jnp.mean(new_v_row, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
      row_factor = jax.lax.rsqrt(new_v_row / row_col_mean)
      update = (grad * jnp.expand_dims(row_factor, d0)
                * jnp.expand_dims(jax.lax.rsqrt(new_v_col), d1))
      return update, new_v_row, new_v_col, placeholder

    treedef = jax.tree.structure(updates)
    out = [one(*leaves) for leaves in zip(*(treedef.flatten_up_to(t) for t in (
        updates, state.v_row, state.v_col, state.v, params)))]
    field = lambda i: treedef.unflatten([o[i] for o in out])
    return field(0), optax.FactoredState(count=optax.safe_increment(state.count), v_row=field(1),
                                         v_col=field(2), v=field(3))

  return optax.GradientTransformation(reference.init, update_fn)


def scale_by_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
  """`optax.scale_by_param_block_rms`: updates × max(rms(param), min_scale).

  The same value as optax's, without the `jnp.where` over the whole parameter that optax's
  gradient-safe RMS adds (a full copy of the 64 MB embedding and logits kernels every step).
  """
  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("multiply_by_parameter_scale needs the parameters in update()")
    scale = lambda p: jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p))), min_scale)
    return jax.tree.map(lambda u, p: u * scale(p), updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


@gin.configurable(module="optim")
def adafactor(learning_rate: Schedule | float = 5e-4, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              multiply_by_parameter_scale: bool = True, factored: bool = True,
              min_dim_size_to_factor: int = 128, weight_decay_rate: float | None = None,
              max_grad_norm: float | None = None) -> Optimizer:
  """Adafactor with factored second moments; the defaults are Flan-T5's (Table 22).

  The chain and its state are `optax.adafactor`'s, link for link (checkpoints and the T5X state
  converter rely on that); two links are the faster equivalents above.
  """
  schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
  links = [scale_by_factored_rms(factored, decay_rate, min_dim_size_to_factor)]
  if clipping_threshold is not None:
    links.append(optax.clip_by_block_rms(clipping_threshold))
  links.append(optax.scale_by_learning_rate(schedule, flip_sign=False))
  if multiply_by_parameter_scale:
    links.append(scale_by_param_block_rms())
  if momentum is not None:
    links.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
  if weight_decay_rate is not None:
    links.append(optax.add_decayed_weights(weight_decay_rate))
  links.append(optax.scale(-1))
  return Optimizer(_with_clipping(optax.chain(*links), max_grad_norm), schedule)


@gin.configurable(module="optim")
def adamw(learning_rate: Schedule | float = 1e-4, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0,
          max_grad_norm: float | None = 1.0) -> Optimizer:
  """AdamW with global-norm gradient clipping."""
  schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
  tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  return Optimizer(_with_clipping(tx, max_grad_norm), schedule)
