"""Optimizers and schedules: Flan's Adafactor settings, AdamW, constant / rsqrt / cosine."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_jax import optim


def test_schedules():
  const = optim.constant_schedule(5e-4)
  assert float(const(0)) == float(const(10_000)) == pytest.approx(5e-4)
  warm = optim.constant_schedule(1e-3, warmup_steps=10)
  assert float(warm(5)) == pytest.approx(5e-4) and float(warm(50)) == pytest.approx(1e-3)
  rsqrt = optim.rsqrt_schedule(1.0, warmup_steps=100)
  assert float(rsqrt(0)) == pytest.approx(0.1) and float(rsqrt(400)) == pytest.approx(0.05)
  cos = optim.cosine_schedule(1e-3, decay_steps=100, warmup_steps=10, end_value=1e-5)
  assert float(cos(10)) == pytest.approx(1e-3) and float(cos(100)) == pytest.approx(1e-5)
  assert float(cos(55)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-3)


def test_adafactor_is_factored_without_momentum():
  params = {"big": jnp.ones((256, 512)), "small": jnp.ones((4,))}
  opt = optim.adafactor()
  state = opt.tx.init(params)
  shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(state))
  assert (256,) in shapes and (512,) in shapes  # factored row / column statistics
  assert (256, 512) not in shapes  # neither a full second moment nor a momentum buffer
  assert float(opt.learning_rate(123)) == pytest.approx(5e-4)


def test_adafactor_update_scales_with_parameters_and_clips():
  """Parameter-scale updates: a 10x larger parameter gets a 10x larger step."""
  params = {"a": jnp.full((4, 4), 1.0), "b": jnp.full((4, 4), 10.0)}
  grads = {"a": jnp.full((4, 4), 3.0), "b": jnp.full((4, 4), 3.0)}
  opt = optim.adafactor(1e-2)
  updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["b"]), 10 * np.asarray(updates["a"]), rtol=1e-5)
  # Clipping at RMS 1.0: the first update is -lr * rms(param), whatever the gradient's size.
  np.testing.assert_allclose(np.asarray(updates["a"]), -1e-2, rtol=1e-4)


@pytest.mark.parametrize("make", [optim.adafactor, optim.adamw])
def test_optimizers_reduce_a_quadratic(make):
  params = {"w": jnp.full((8, 8), 3.0)}
  opt = make(learning_rate=optim.constant_schedule(0.1))
  state = opt.tx.init(params)
  loss = lambda p: jnp.sum(p["w"] ** 2)
  for _ in range(20):
    updates, state = opt.tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * 64 * 9


@pytest.mark.parametrize("kwargs", [{}, {"min_dim_size_to_factor": 8, "momentum": 0.9,
                                     "weight_decay_rate": 1e-3, "clipping_threshold": None}])
def test_adafactor_matches_optax_adafactor(kwargs):
  """Same state tree (what checkpoints and the T5X state converter rely on) and the same updates
  as optax.adafactor, over steps; factored over the leading, middle and last axes. Only float32
  rounding differs (sums in another order); weight decay's cancellation needs the absolute term."""
  shapes = {"embedding": (300, 160), "wo": (160, 130), "mlp": (130, 300), "scanned": (3, 140, 150),
            "stacked_rows": (150, 4, 140), "vector": (160,), "heads": (160, 4, 16)}
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  ours = optim.adafactor(1e-2, **kwargs).tx
  theirs = optax.adafactor(optax.constant_schedule(1e-2),
                           **{"decay_rate": 0.8, "clipping_threshold": 1.0, **kwargs})
  state, ref_state = ours.init(params), theirs.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  for _ in range(3):
    grads = {k: jnp.asarray(rng.normal(size=s) * rng.uniform(0.1, 10), jnp.float32)
             for k, s in shapes.items()}
    updates, state = jax.jit(ours.update)(grads, state, params)
    ref_updates, ref_state = jax.jit(theirs.update)(grads, ref_state, params)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6 * np.abs(b).max())
    jax.tree.map(close, (updates, state), (ref_updates, ref_state))
    params = optax.apply_updates(params, updates)
