"""Trainer: sharded init, compiled steps, identical losses on every mesh, microbatching, NaN stop.

`ToyModel` stands in for the model wrappers (same interface: get_initial_variables, loss_fn),
so these tests pin the trainer's contract independently of the networks. Other training tests
import it from here.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_jax import optim, partitioning
from flan_jax.trainer import NonFiniteLossError, Trainer, finalize_eval

VOCAB, EMBED, MLP, LENGTH = 32, 16, 32, 8


class _Net(nn.Module):
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens, *, enable_dropout: bool):
    init = nn.initializers.normal(0.3)
    emb = self.param("embedding", nn.with_logical_partitioning(init, ("vocab", "embed")), (VOCAB, EMBED))
    x = emb[tokens]
    wi = self.param("wi", nn.with_logical_partitioning(init, ("embed", "mlp")), (EMBED, MLP))
    wo = self.param("wo", nn.with_logical_partitioning(init, ("mlp", "embed")), (MLP, EMBED))
    h = nn.Dropout(self.dropout_rate)(jax.nn.gelu(x @ wi), deterministic=not enable_dropout)
    x = x + h @ wo
    out = self.param("logits", nn.with_logical_partitioning(init, ("embed", "vocab")), (EMBED, VOCAB))
    return x @ out


class ToyModel:
  """A next-token MLP with the model-wrapper interface and logically named parameters."""

  def __init__(self, dropout_rate: float = 0.0):
    self.module = _Net(dropout_rate)

  def get_initial_variables(self, rng, input_shapes, input_types=None) -> dict[str, Any]:
    tokens = jnp.zeros(input_shapes["decoder_input_tokens"], jnp.int32)
    return self.module.init(rng, tokens, enable_dropout=False)

  def loss_fn(self, params, batch, dropout_rng):
    logits = self.module.apply({"params": params}, batch["decoder_input_tokens"],
                               enable_dropout=dropout_rng is not None,
                               rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    targets = batch["decoder_target_tokens"]
    weights = (targets > 0).astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    z = jax.nn.logsumexp(logits, -1) ** 2 * 1e-4
    num = jnp.maximum(weights.sum(), 1.0)
    loss = ((xent + z) * weights).sum() / num
    acc = ((logits.argmax(-1) == targets) * weights).sum() / num
    return loss, {"loss": loss, "z_loss": (z * weights).sum() / num, "accuracy": acc,
                  "num_tokens": weights.sum()}


def toy_batches(num: int, batch_size: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Learnable sequences (next token = token + 1) with ragged padding, so token counts differ."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    start = rng.integers(1, VOCAB - LENGTH - 1, size=(batch_size, 1))
    seq = (start + np.arange(LENGTH + 1)) % (VOCAB - 1) + 1
    lengths = rng.integers(2, LENGTH + 1, size=(batch_size, 1))
    mask = np.arange(LENGTH) < lengths
    out.append({"decoder_input_tokens": (seq[:, :-1] * mask).astype(np.int32),
                "decoder_target_tokens": (seq[:, 1:] * mask).astype(np.int32)})
  return out


SHAPES = {"decoder_input_tokens": (16, LENGTH), "decoder_target_tokens": (16, LENGTH)}


class SumLossModel(ToyModel):
  """Loss normalized by a constant (sum / 50), as model wrappers do with a float normalization."""
  loss_normalization = 50.0

  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    return loss * metrics["num_tokens"] / self.loss_normalization, metrics


def run_losses(mesh_shape, steps=20, num_microbatches=1, optimizer=None, model=None):
  mesh = partitioning.create_mesh(*mesh_shape, devices=jax.devices()[:np.prod(mesh_shape)])
  trainer = Trainer(model or ToyModel(), optimizer or optim.adafactor(1e-2), mesh, SHAPES,
                    num_microbatches=num_microbatches)
  state = trainer.init_state()
  losses = []
  for batch in toy_batches(steps):
    state, metrics = trainer.train_step(state, trainer.global_batch(batch))
    losses.append(float(metrics["loss"]))
  return np.array(losses), state, trainer


@pytest.fixture(scope="module")
def single_device():
  return run_losses((1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)],
                         ids=["data_parallel", "fsdp", "2d"])
def test_meshes_give_the_same_losses_as_one_device(single_device, mesh_shape):
  losses, state, trainer = run_losses(mesh_shape)
  np.testing.assert_allclose(losses, single_device[0], rtol=2e-5)
  assert losses[-1] < losses[0]
  if mesh_shape == (1, 8, 1):  # FSDP really splits the parameters
    assert state.params["wi"].sharding.spec == jax.sharding.PartitionSpec("fsdp")
    assert state.params["wi"].addressable_shards[0].data.shape == (EMBED // 8, MLP)


def test_optimizer_state_is_sharded_like_params():
  _, state, _ = run_losses((1, 2, 4), steps=1, optimizer=optim.adafactor(1e-2, min_dim_size_to_factor=8))
  factored = [s for s in jax.tree.leaves(state.opt_state) if s.ndim == 1 and s.shape[0] == MLP]
  assert len(factored) == 4  # row/column statistics over the `mlp` and `vocab` (32) dimensions
  assert all(s.sharding.spec == jax.sharding.PartitionSpec("model") for s in factored)
  assert state.params["wi"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")


@pytest.mark.parametrize("model_cls", [ToyModel, SumLossModel], ids=["token_mean", "constant"])
def test_microbatching_equals_the_full_batch(model_cls):
  """Microbatches weighted per the model's loss normalization reproduce the large batch."""
  run = lambda **kw: run_losses((2, 1, 1), steps=3, optimizer=optim.adamw(1e-2), model=model_cls(), **kw)
  ref_losses, ref_state, trainer = run()
  assert trainer.loss_normalization == ("sum" if model_cls is SumLossModel else "tokens")
  for n in (4,):
    losses, state, _ = run(num_microbatches=n)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 state.params, ref_state.params)


def test_metrics_and_eval(single_device):
  _, state, trainer = single_device
  batch = trainer.global_batch(toy_batches(1, seed=5)[0])
  state2, metrics = trainer.train_step(jax.tree.map(jnp.copy, state), batch)
  assert set(metrics) >= {"loss", "accuracy", "z_loss", "learning_rate", "num_tokens", "grad_norm"}
  assert int(state2.step) == int(state.step) + 1
  assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
  result = finalize_eval([trainer.eval_step(state.params, batch)] * 2)
  assert result["num_tokens"] == 2 * float(metrics["num_tokens"])
  assert 0 < result["accuracy"] <= 1 and result["loss"] > 0


def test_state_is_donated(single_device):
  _, state, trainer = single_device
  state = jax.tree.map(jnp.copy, state)
  old = state.params["wi"]
  trainer.train_step(state, trainer.global_batch(toy_batches(1)[0]))
  assert old.is_deleted()


def test_non_finite_loss_error_names_the_fix():
  from flan_jax.trainer import check_finite  # pylint: disable=import-outside-toplevel
  with pytest.raises(NonFiniteLossError, match="step 7.*last good checkpoint"):
    check_finite({"loss": float("nan")}, step=7, last_checkpoint=5)


class _EosOnlyVocab:
  """The wrappers need only the EOS id to train."""
  eos_id = 1


def _t5_batches(num: int, batch_size: int = 16, seed: int = 1) -> list[dict[str, np.ndarray]]:
  """Unpacked EncDec features: copy a random input prefix into the target."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    inputs = rng.integers(2, 200, size=(batch_size, 16)).astype(np.int32)
    targets = np.concatenate([inputs[:, :7], np.ones((batch_size, 1), np.int32)], axis=1)
    out.append({"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
                "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
                "decoder_loss_weights": np.ones_like(targets)})
  return out


@pytest.fixture(scope="module")
def tiny_t5_losses():
  """Five steps of the real tiny T5 (float32) on one device and on a 2x2x2 (data, fsdp, model) mesh."""
  from flan_jax.models import configs, model as model_lib  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(configs.CONFIGS["flan_t5_tiny"], dtype="float32", vocab_size=256)
  shapes = {"encoder_input_tokens": (16, 16), "decoder_input_tokens": (16, 8),
            "decoder_target_tokens": (16, 8), "decoder_loss_weights": (16, 8)}
  results = {}
  for mesh_shape in [(1, 1, 1), (2, 2, 2)]:
    mesh = partitioning.create_mesh(*mesh_shape, devices=jax.devices()[:np.prod(mesh_shape)])
    trainer = Trainer(model_lib.EncoderDecoderModel(config, _EosOnlyVocab()), optim.adafactor(1e-2),
                      mesh, shapes)
    state = trainer.init_state()
    losses = []
    for batch in _t5_batches(5):
      state, metrics = trainer.train_step(state, trainer.global_batch(batch))
      losses.append(float(metrics["loss"]))
    results[mesh_shape] = (np.array(losses), state)
  return results


def test_real_t5_on_a_2d_mesh_matches_one_device(tiny_t5_losses):
  single, _ = tiny_t5_losses[(1, 1, 1)]
  sharded, state = tiny_t5_losses[(2, 2, 2)]
  np.testing.assert_allclose(sharded, single, rtol=1e-4)
  assert sharded[-1] < sharded[0]
  kernel = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")


def test_layer_activation_constraints_reach_the_compiled_step():
  """The layers' `with_logical_constraint`s only exist when the trainer traces with mesh and rules."""
  from flan_jax.models import configs, model as model_lib  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(configs.CONFIGS["flan_t5_tiny"], dtype="float32", vocab_size=256)
  shapes = {"encoder_input_tokens": (16, 16), "decoder_input_tokens": (16, 8),
            "decoder_target_tokens": (16, 8), "decoder_loss_weights": (16, 8)}
  mesh = partitioning.create_mesh(2, 2, 2, devices=jax.devices()[:8])
  trainer = Trainer(model_lib.EncoderDecoderModel(config, _EosOnlyVocab()), optim.adafactor(1e-2),
                    mesh, shapes)
  batch = {k: jax.ShapeDtypeStruct(s, np.int32, sharding=trainer.batch_shardings[k])
           for k, s in shapes.items()}
  text = trainer.train_step.lower(trainer.abstract_state, batch).as_text()
  constraints = [line for line in text.splitlines() if "sharding_constraint" in line or "@Sharding" in line]
  # Activations [batch, length, heads|mlp]: batch over (data, fsdp), heads/mlp over model.
  assert len(constraints) > 20, len(constraints)
  assert any('"model"' in line or "model" in line.split("sharding")[-1] for line in constraints)
