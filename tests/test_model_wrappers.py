"""Loss math, and the wrappers' loss / score / predict on tiny random T5 and decoder-only networks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import model as model_lib


def _log_softmax_np(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))



def _assert_one_beam_is_greedy_where_greedy_ends(model, params, batch, length):
  """Beam search with one beam equals greedy on the rows greedy ends (EOS) within `length`."""
  greedy = np.asarray(model.predict_batch(params, batch, max_decode_length=length))
  ended = [r for r, row in enumerate(greedy.tolist()) if model.eos_id in row]
  assert 0 in ended
  beam = np.asarray(model.predict_batch(params, batch, decode_method="beam", beam_size=1,
                                        alpha=0.0, max_decode_length=length))
  np.testing.assert_array_equal(beam[ended], greedy[ended])
  return greedy

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


# ---- Wrappers on the real networks (tiny configs, random weights) ------------------------------

class _IdVocab:
  """Token ids only (the wrappers use eos_id); the infer/api tests use the real T5 vocabulary."""
  eos_id = 1


def _tiny(name):
  """A shipped tiny config in float32, so cached and uncached decoding agree exactly."""
  from flan_jax.models import configs  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(configs.CONFIGS[name], dtype="float32")


def _unboxed(variables):
  return jax.tree.map(lambda x: x.value if hasattr(x, "names") else x, variables["params"],
                      is_leaf=lambda x: hasattr(x, "names"))


@pytest.fixture(scope="module")
def t5():
  model = model_lib.EncoderDecoderModel(_tiny("flan_t5_tiny"), _IdVocab())
  rng = np.random.default_rng(0)
  inputs = [list(rng.integers(3, 100, size=n)) + [1] for n in (5, 9, 3, 7)]
  targets = [list(rng.integers(3, 100, size=n)) + [1] for n in (3, 6, 1, 4)]
  batch = model.make_batch(inputs, targets, 12, 8)
  params = _init(model, {k: v.shape for k, v in batch.items()}, 0)
  return model, params, batch


def _init(model, shapes, seed):
  """Random params, scaled up for sharper, more varied predictions (jitted: eager init is slow)."""
  init = jax.jit(lambda rng: _unboxed(model.get_initial_variables(rng, shapes)))
  return jax.tree.map(lambda x: x * 4.0, init(jax.random.PRNGKey(seed)))


def _greedy_without_cache_t5(model, params, batch, length):
  """Full forward pass over the whole decoder prefix at every step."""
  rows = batch["encoder_input_tokens"].shape[0]
  seqs = np.zeros((rows, length), np.int32)
  done = np.zeros(rows, bool)
  forward = jax.jit(lambda dec_in: model.module.apply(
      {"params": params}, batch["encoder_input_tokens"], dec_in, dec_in, enable_dropout=False))
  for i in range(length):
    dec_in = np.zeros((rows, length), np.int32)
    dec_in[:, 1:] = seqs[:, :-1]
    logits = forward(dec_in)
    token = np.where(done, 0, np.argmax(np.asarray(logits)[:, i], -1))
    seqs[:, i] = token
    done |= token == 1
  return seqs


def test_t5_cached_greedy_equals_full_forward(t5):
  model, params, batch = t5
  cached = np.asarray(model.predict_batch(params, batch, max_decode_length=8))
  np.testing.assert_array_equal(cached, _greedy_without_cache_t5(model, params, batch, 8))
  assert cached.dtype == np.int32 and cached.shape == (4, 8)


def test_t5_other_decoders_reduce_to_greedy(t5):
  model, params, batch = t5
  greedy = np.asarray(model.predict_batch(params, batch, max_decode_length=8))
  cold = model.predict_batch(params, batch, jax.random.PRNGKey(3), decode_method="sample",
                             num_decodes=3, temperature=1e-4, max_decode_length=8)
  assert cold.shape == (4, 3, 8)
  for sample in range(3):
    np.testing.assert_array_equal(np.asarray(cold)[:, sample], greedy)
  beams = model.predict_batch(params, batch, decode_method="beam", beam_size=2, num_decodes=2,
                              alpha=0.0, max_decode_length=8)
  assert beams.shape == (4, 2, 8)
  # Beam search with one beam is greedy when greedy finishes within the length: call the token
  # greedy emits third in row 0 "EOS" so that rows end early.
  eos_model = model_lib.EncoderDecoderModel(
      model.config, type("Vocab", (), {"eos_id": int(greedy[0, 2])})())
  _assert_one_beam_is_greedy_where_greedy_ends(eos_model, params, batch, 8)


def test_t5_score_and_loss(t5):
  model, params, batch = t5
  logits = jax.jit(lambda b: model.module.apply(
      {"params": params}, b["encoder_input_tokens"], b["decoder_input_tokens"],
      b["decoder_target_tokens"], enable_dropout=False))(batch)
  log_probs = _log_softmax_np(np.asarray(logits, np.float64))
  gathered = np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  expected = (gathered * batch["decoder_loss_weights"]).sum(-1)
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)), expected, rtol=1e-4)
  # One wrapper with dropout 0.5: dropout is on only when a dropout rng is given.
  dropout_model = model_lib.EncoderDecoderModel(
      dataclasses.replace(model.config, dropout_rate=0.5), _IdVocab())
  (loss, metrics), dropped = jax.jit(lambda rng: (
      dropout_model.loss_fn(params, batch, None), dropout_model.loss_fn(params, batch, rng)[0]))(
          jax.random.PRNGKey(1))
  assert float(dropped) != pytest.approx(float(loss), rel=1e-3)
  assert set(metrics) >= {"loss", "z_loss", "accuracy", "num_tokens"}
  assert float(metrics["num_tokens"]) == batch["decoder_loss_weights"].sum()
  # Default normalization: mean over real target tokens, z-loss 1e-4 included.
  assert float(loss) == pytest.approx(float(metrics["loss"]), rel=1e-6)
  num_tokens = float(metrics["num_tokens"])
  assert float(loss) == pytest.approx(-expected.sum() / num_tokens + float(metrics["z_loss"]), rel=1e-4)


@pytest.fixture(scope="module")
def lm():
  model = model_lib.DecoderOnlyModel(_tiny("decoder_tiny"), _IdVocab())
  return model, _init(model, {"decoder_input_tokens": (2, 16)}, 1)


def test_prefix_lm_batch_layout(lm):
  model, _ = lm
  batch = model.make_batch([[5, 6, 1], [7, 1]], [[8, 1], [9, 10, 1]], 4, 4)
  np.testing.assert_array_equal(batch["decoder_target_tokens"],
                                [[5, 6, 1, 8, 1, 0, 0, 0], [7, 1, 9, 10, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
  np.testing.assert_array_equal(batch["decoder_loss_weights"],
                                [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_causal_attention"],
                                [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])


def test_prompt_that_fills_input_length_keeps_every_token(lm):
  model, _ = lm
  batch = model.make_batch([[5, 6, 7, 1], [7, 1]], None, 4, 0)
  np.testing.assert_array_equal(model_lib._prompt_lengths(batch), [4, 2])  # pylint: disable=protected-access


def _greedy_full_forward(model, params, prompts, steps, prefix_lm):
  """Greedy decoding by a full forward pass per step (no cache), the prompt (BOS + its tokens)
  attending bidirectionally when `prefix_lm`, as in prefix-LM training."""
  forward = jax.jit(lambda t, ca: model.module.apply({"params": params}, t, t,
                                                     decoder_causal_attention=ca,
                                                     enable_dropout=False))
  out = np.zeros((len(prompts), steps), np.int32)
  for row, prompt in enumerate(prompts):
    seq = list(prompt)
    for i in range(steps):
      tokens = np.zeros((1, 16), np.int32)  # right padding leaves earlier positions unchanged
      tokens[0, 1:len(seq) + 1] = seq
      causal = (np.arange(16) <= len(prompt))[None].astype(np.int32) * int(prefix_lm)
      out[row, i] = np.argmax(np.asarray(forward(tokens, causal))[0, len(seq)])
      seq.append(int(out[row, i]))
      if out[row, i] == 1:
        break
  return out


def test_prefix_lm_prefilled_decoding_equals_full_forward(lm):
  """Rows of different prompt lengths are prefilled in one call with the bidirectional prefix."""
  model, params = lm
  prompts = [[5, 6, 7, 1], [8, 1], [9, 10, 11, 12, 13, 1], [14, 15, 16, 17, 18, 19, 20, 1]]
  batch = model.make_batch(prompts, None, 8, 0)
  decoded = np.asarray(model.predict_batch(params, batch, max_decode_length=5))
  assert decoded.shape == (4, 5)
  expected = _greedy_full_forward(model, params, prompts, 5, prefix_lm=True)
  np.testing.assert_array_equal(decoded, expected)
  # The prefix matters: causal prompt processing decodes differently.
  assert not np.array_equal(expected, _greedy_full_forward(model, params, prompts, 5, False))
  # Beam search and sampling run from the same prefill: one beam and a cold sample are greedy
  # here (greedy ends within the length in the rows checked).
  eos_model = model_lib.DecoderOnlyModel(
      model.config, type("Vocab", (), {"eos_id": int(expected[0, 1])})())
  greedy = _assert_one_beam_is_greedy_where_greedy_ends(eos_model, params, batch, 5)
  cold = np.asarray(eos_model.predict_batch(params, batch, jax.random.PRNGKey(0),
                                            decode_method="sample", num_decodes=2,
                                            temperature=1e-4, max_decode_length=5))
  np.testing.assert_array_equal(cold, np.stack([greedy, greedy], axis=1))
  scores = np.asarray(model.score_batch(params, model.make_batch(prompts, [[3, 1]] * len(prompts), 8, 4)))
  assert scores.shape == (4,) and np.all(scores < 0)


def test_beam_search_reorders_a_scanned_cache(t5):
  """With scan_layers the cache leaves carry a leading layer axis; beams must match the unscanned net."""
  model, params, batch = t5
  scanned = model_lib.EncoderDecoderModel(dataclasses.replace(model.config, scan_layers=True), _IdVocab())
  stacked = dict(params)
  for stack in ("encoder", "decoder"):
    layer_names = sorted(k for k in params[stack] if k.startswith("layers_"))
    stacked[stack] = {k: v for k, v in params[stack].items() if not k.startswith("layers_")}
    stacked[stack]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                            *[params[stack][k] for k in layer_names])
  kwargs = dict(decode_method="beam", beam_size=3, num_decodes=3, max_decode_length=6)
  expected = np.asarray(model.predict_batch(params, batch, **kwargs))
  assert len({tuple(row) for row in expected.reshape(-1, 6)[:, :5].tolist()}) > 4  # beams diverge
  np.testing.assert_array_equal(np.asarray(scanned.predict_batch(stacked, batch, **kwargs)), expected)
