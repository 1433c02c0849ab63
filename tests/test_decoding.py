"""Decoding loops on a toy cached language model whose uncached version is written independently."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import decoding

VOCAB, DIM, EOS = 5, 8, 1


@pytest.fixture(scope="module")
def toy():
  """A toy LM: next-token logits from the mean embedding of the fed tokens and the last one.

  Returns (cached step function, uncached full recompute, the embedding table)."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  emb = jax.random.normal(k1, (VOCAB, DIM))
  w_mean = jax.random.normal(k2, (DIM, VOCAB)) * 2.0
  w_last = jax.random.normal(k3, (DIM, VOCAB)) * 2.0

  def eos_bias(num_fed):
    """EOS grows likelier with length, so sequences end at different steps."""
    return jnp.zeros(jnp.shape(num_fed) + (VOCAB,)).at[..., EOS].set(3.0 * num_fed - 9.0)

  def cached(state):
    """Cache = running sum and count of fed embeddings per row (rows may differ in count)."""
    e = emb[state.cur_token[:, 0]]
    total, num_fed = state.cache["sum"] + e, state.cache["n"] + 1
    logits = (total / num_fed[:, None]) @ w_mean + e @ w_last
    return logits + eos_bias(num_fed), {"sum": total, "n": num_fed}

  def full(fed):
    """No cache: recompute from the whole fed prefix [rows, t]."""
    e = emb[fed]
    return e.mean(axis=1) @ w_mean + e[:, -1] @ w_last + eos_bias(fed.shape[1])

  return cached, full, emb


def _cache(rows):
  return {"sum": jnp.zeros((rows, DIM)), "n": jnp.zeros((rows,))}


def _prefill(toy, prompts):
  """The toy's prefill of ragged prompts (BOS 0 first): its cache and step-0 logits."""
  _, full, emb = toy
  fed = [[0] + list(p) for p in prompts]
  cache = {"sum": jnp.stack([emb[jnp.array(f)].sum(0) for f in fed]),
           "n": jnp.array([len(f) for f in fed], jnp.float32)}
  return cache, jnp.stack([full(jnp.array([f]))[0] for f in fed])


def _greedy_without_cache(full, length, prompts):
  seqs = np.zeros((len(prompts), length), np.int32)
  for r, prompt in enumerate(prompts):
    fed = [0] + list(prompt)
    for i in range(length):
      tok = int(jnp.argmax(full(jnp.array([fed]))[0]))
      seqs[r, i] = tok
      fed.append(tok)
      if tok == EOS:
        break
  return seqs


def _greedy(toy, length, prompts):
  cache, initial_logits = _prefill(toy, prompts)
  fn = jax.jit(lambda c, l: decoding.temperature_sample(
      toy[0], c, rows=len(prompts), length=length, eos_id=EOS, temperature=0.0, initial_logits=l))
  return fn(cache, initial_logits)


def test_greedy_with_cache_equals_full_recompute(toy):
  cached, full, _ = toy
  seqs, _ = jax.jit(lambda c: decoding.temperature_sample(
      cached, c, rows=2, length=6, eos_id=EOS, temperature=0.0))(_cache(2))
  np.testing.assert_array_equal(np.asarray(seqs), _greedy_without_cache(full, 6, [[], []]))
  # Prefilled prompts of different lengths: the loop starts from their step-0 logits.
  prompts = [[], [2], [3, 4], [4, 4, 2]]
  seqs, _ = _greedy(toy, 6, prompts)
  expected = _greedy_without_cache(full, 6, prompts)
  np.testing.assert_array_equal(np.asarray(seqs), expected)
  assert seqs.dtype == jnp.int32 and len({tuple(r) for r in expected.tolist()}) > 2


def test_tokens_after_eos_are_zero(toy):
  cached, _, _ = toy
  seqs, _ = decoding.temperature_sample(cached, _cache(16), rows=16, length=12, eos_id=EOS,
                                        rng=jax.random.PRNGKey(2), temperature=2.0)
  ended = [row for row in np.asarray(seqs).tolist() if EOS in row[:-1]]
  assert ended
  for row in ended:
    assert not any(row[row.index(EOS) + 1:])


def test_near_zero_temperature_and_top1_equal_greedy(toy):
  cached, _, _ = toy
  prompts = [[], [2], [3]]
  greedy, _ = _greedy(toy, 6, prompts)
  cache, initial_logits = _prefill(toy, prompts)
  common = dict(rows=3, length=6, eos_id=EOS, initial_logits=initial_logits)
  cold, _ = decoding.temperature_sample(cached, cache, rng=jax.random.PRNGKey(7),
                                        temperature=1e-4, **common)
  top1, _ = decoding.temperature_sample(cached, cache, rng=jax.random.PRNGKey(8),
                                        temperature=1.0, topk=1, **common)
  np.testing.assert_array_equal(np.asarray(cold), np.asarray(greedy))
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))


def test_sampling_varies_and_log_likelihood_matches(toy):
  cached, full, _ = toy
  rows = 16
  seqs, logprob = decoding.temperature_sample(cached, _cache(rows), rows=rows, length=5, eos_id=EOS,
                                              rng=jax.random.PRNGKey(1), temperature=1.5)
  seqs = np.asarray(seqs)
  assert seqs.shape == (rows, 5)
  assert len({tuple(r) for r in seqs}) > 1
  # Recompute the log-likelihood of one sample token by token without the cache.
  row, fed, expected = seqs[0], [0], 0.0
  for tok in row:
    expected += float(jax.nn.log_softmax(full(jnp.array([fed]))[0])[tok])
    fed.append(int(tok))
    if tok == EOS:
      break
  np.testing.assert_allclose(float(logprob[0]), expected, rtol=1e-5)


def test_argmax_last_equals_jnp_argmax_with_ties_and_nan():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 1000)).astype(np.float32)
  logits[1, [7, 300, 999]] = 50.0  # tie: the first index wins
  logits[2, :] = -3.0  # all equal
  logits[3, [10, 20]] = np.nan  # NaN counts as the maximum
  logits[4, -1] = np.inf
  logits[5, [0, 5]] = [np.inf, np.inf]
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.asarray(logits, dtype)
    got = jax.jit(decoding.argmax_last)(x)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(x, axis=-1)))


def test_filter_logits_topk_and_topp():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  kept = lambda x: (np.asarray(x)[0] > decoding.NEG_INF / 2).tolist()
  assert kept(decoding.filter_logits(logits, topk=2)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, topp=0.5)) == [True, False, False, False]
  assert kept(decoding.filter_logits(logits, topp=0.7)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, topp=0.8)) == [True, True, True, False]


def test_beam_of_one_equals_greedy(toy):
  """Holds when greedy ends within the length (else beam search returns its best finished beam)."""
  cached, _, _ = toy
  prompts = [[], [3]]
  greedy, _ = _greedy(toy, 12, prompts)
  assert all(EOS in row for row in np.asarray(greedy).tolist())
  cache, initial_logits = _prefill(toy, prompts)
  beams, _ = decoding.beam_search(cached, cache, batch=2, beam_size=1, length=12, eos_id=EOS,
                                  alpha=0.0, initial_logits=initial_logits)
  np.testing.assert_array_equal(np.asarray(beams)[:, 0], np.asarray(greedy))


def _exhaustive_best(full, length, alpha):
  """Best length-penalized score over all sequences ending in EOS within `length` tokens."""
  best = -np.inf
  for n in range(1, length + 1):
    for body in itertools.product([t for t in range(VOCAB) if t != EOS], repeat=n - 1):
      seq = list(body) + [EOS]
      fed, total = [0], 0.0
      for tok in seq:
        total += float(jax.nn.log_softmax(full(jnp.array([fed]))[0])[tok])
        fed.append(tok)
      best = max(best, total / float(decoding.brevity_penalty(alpha, jnp.array(n))))
  return best


def test_wide_beam_finds_exhaustive_optimum(toy):
  cached, full, _ = toy
  length, alpha, k = 3, 0.6, 16  # 16 beams cover every live prefix of length <= 2 (4 * 4).
  beams, scores = jax.jit(lambda c: decoding.beam_search(
      cached, c, batch=1, beam_size=k, length=length, eos_id=EOS, alpha=alpha))(_cache(k))
  np.testing.assert_allclose(float(scores[0, 0]), _exhaustive_best(full, length, alpha), rtol=1e-5)
  assert beams.shape == (1, k, length) and beams.dtype == jnp.int32
  # Finished beams first, best first; beams that ran out of length without EOS fill the rest.
  ended = np.array([EOS in row for row in np.asarray(beams)[0].tolist()])
  assert ended[0] and not np.any(ended[np.argmin(ended):]) and not ended.all()
  assert np.all(np.diff(np.asarray(scores)[0][ended]) <= 1e-6)
