"""Loss math, and the wrappers' loss / score / predict on tiny random T5 and decoder-only networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import model as model_lib


def _log_softmax_np(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_and_z_loss_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(2, 3))
  loss, z = model_lib.cross_entropy_with_z_loss(jnp.array(logits), jnp.array(targets), z_loss=1e-2)
  lse = np.log(np.exp(logits).sum(-1))
  nll = -np.take_along_axis(_log_softmax_np(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(z), 1e-2 * lse**2, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(loss), nll + 1e-2 * lse**2, rtol=1e-5)


def test_label_smoothing_is_zero_at_the_smoothed_distribution():
  vocab, smoothing = 6, 0.1
  probs = np.full((1, vocab), smoothing / (vocab - 1))
  probs[0, 2] = 1 - smoothing
  loss, _ = model_lib.cross_entropy_with_z_loss(jnp.log(jnp.array(probs)), jnp.array([2]), z_loss=0.0,
                                                label_smoothing=smoothing)
  assert abs(float(loss[0])) < 1e-5
  worse, _ = model_lib.cross_entropy_with_z_loss(jnp.zeros((1, vocab)), jnp.array([2]), z_loss=0.0,
                                                 label_smoothing=smoothing)
  assert float(worse[0]) > 0.1


def test_loss_normalization_modes():
  token_loss = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 6.0, 7.0]])
  weights = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  norm = lambda mode, seg=None: float(model_lib.normalize_loss(token_loss, weights, mode, seg))
  assert norm("num_real_target_tokens") == pytest.approx(15 / 5)
  assert norm("num_total_target_tokens") == pytest.approx(15 / 8)
  assert norm(10.0) == pytest.approx(1.5)
  # Rows as sequences: means 2 and 4.5.
  assert norm("per_sequence") == pytest.approx((2 + 4.5) / 2)
  # Packed: row 0 holds two sequences (segments 1, 2): means 1.5, 3 and 4.5.
  segments = jnp.array([[1, 1, 2, 0], [1, 1, 0, 0]])
  assert norm("per_sequence", segments) == pytest.approx((1.5 + 3 + 4.5) / 3)
  with pytest.raises(ValueError, match="unknown loss normalization 'mean'"):
    norm("mean")
