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
import jax.numpy as jnp
import optax

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


@gin.configurable(module="optim")
def adafactor(learning_rate: Schedule | float = 5e-4, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              multiply_by_parameter_scale: bool = True, factored: bool = True,
              min_dim_size_to_factor: int = 128, weight_decay_rate: float | None = None,
              max_grad_norm: float | None = None) -> Optimizer:
  """Adafactor with factored second moments; the defaults are Flan-T5's (Table 22)."""
  schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
  tx = optax.adafactor(
      learning_rate=schedule, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, factored=factored)
  return Optimizer(_with_clipping(tx, max_grad_norm), schedule)


@gin.configurable(module="optim")
def adamw(learning_rate: Schedule | float = 1e-4, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0,
          max_grad_norm: float | None = 1.0) -> Optimizer:
  """AdamW with global-norm gradient clipping."""
  schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
  tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  return Optimizer(_with_clipping(tx, max_grad_norm), schedule)
