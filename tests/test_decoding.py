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
  """A toy LM: next-token logits from the mean embedding of the fed tokens and the last one."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  emb = jax.random.normal(k1, (VOCAB, DIM))
  w_mean = jax.random.normal(k2, (DIM, VOCAB)) * 2.0
  w_last = jax.random.normal(k3, (DIM, VOCAB)) * 2.0

  def eos_bias(num_fed):
    """EOS grows likelier with length, so sequences end at different steps."""
    return jnp.zeros(VOCAB).at[EOS].set(3.0 * num_fed - 9.0)

  def cached(state):
    """Cache = running sum of fed embeddings per row."""
    e = emb[state.cur_token[:, 0]]
    total = state.cache["sum"] + e
    logits = (total / (state.cur_index + 1)) @ w_mean + e @ w_last
    return logits + eos_bias(state.cur_index + 1), {"sum": total}

  def full(fed):
    """No cache: recompute from the whole fed prefix [rows, t]."""
    e = emb[fed]
    return e.mean(axis=1) @ w_mean + e[:, -1] @ w_last + eos_bias(fed.shape[1])

  return cached, full


def _cache(rows):
  return {"sum": jnp.zeros((rows, DIM))}


def _greedy_without_cache(full, rows, length, prompt=None, prompt_lengths=None):
  seqs = np.zeros((rows, length), np.int32)
  for r in range(rows):
    fed = [0]
    for i in range(length):
      if prompt is not None and i < prompt_lengths[r]:
        tok = int(prompt[r, i])
      else:
        tok = int(jnp.argmax(full(jnp.array([fed]))[0]))
      seqs[r, i] = tok
      fed.append(tok)
      if tok == EOS and (prompt is None or i >= prompt_lengths[r]):
        break
  return seqs


def _greedy(cached, rows, length, **kw):
  fn = jax.jit(lambda c: decoding.temperature_sample(
      cached, c, rows=rows, length=length, eos_id=EOS, temperature=0.0, **kw))
  return fn(_cache(rows))


def test_greedy_with_cache_equals_full_recompute(toy):
  cached, full = toy
  # Different rows via different forced first tokens.
  prompt = jnp.array([[0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0], [3, 4, 0, 0, 0, 0], [4, 4, 2, 0, 0, 0]])
  lengths = jnp.array([0, 1, 2, 3])
  seqs, _ = _greedy(cached, 4, 6, prompt=prompt, prompt_lengths=lengths)
  expected = _greedy_without_cache(full, 4, 6, np.asarray(prompt), np.asarray(lengths))
  np.testing.assert_array_equal(np.asarray(seqs), expected)
  assert seqs.dtype == jnp.int32
  # Every row's prompt is kept verbatim.
  for r, n in enumerate(np.asarray(lengths)):
    np.testing.assert_array_equal(np.asarray(seqs)[r, :n], np.asarray(prompt)[r, :n])


def test_tokens_after_eos_are_zero(toy):
  cached, _ = toy
  seqs, _ = decoding.temperature_sample(cached, _cache(16), rows=16, length=12, eos_id=EOS,
                                        rng=jax.random.PRNGKey(2), temperature=2.0)
  ended = [row for row in np.asarray(seqs).tolist() if EOS in row[:-1]]
  assert ended
  for row in ended:
    assert not any(row[row.index(EOS) + 1:])


def test_near_zero_temperature_and_top1_equal_greedy(toy):
  cached, _ = toy
  greedy, _ = _greedy(cached, 3, 6, prompt=jnp.array([[0] * 6, [2] + [0] * 5, [3] + [0] * 5]),
                      prompt_lengths=jnp.array([0, 1, 1]))
  common = dict(rows=3, length=6, eos_id=EOS, prompt=jnp.array([[0] * 6, [2] + [0] * 5, [3] + [0] * 5]),
                prompt_lengths=jnp.array([0, 1, 1]))
  cold, _ = decoding.temperature_sample(cached, _cache(3), rng=jax.random.PRNGKey(7),
                                        temperature=1e-4, **common)
  top1, _ = decoding.temperature_sample(cached, _cache(3), rng=jax.random.PRNGKey(8),
                                        temperature=1.0, topk=1, **common)
  np.testing.assert_array_equal(np.asarray(cold), np.asarray(greedy))
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))


def test_sampling_varies_and_log_likelihood_matches(toy):
  cached, full = toy
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


def test_filter_logits_topk_and_topp():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  kept = lambda x: (np.asarray(x)[0] > decoding.NEG_INF / 2).tolist()
  assert kept(decoding.filter_logits(logits, topk=2)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, topp=0.5)) == [True, False, False, False]
  assert kept(decoding.filter_logits(logits, topp=0.7)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, topp=0.8)) == [True, True, True, False]


def test_beam_of_one_equals_greedy(toy):
  """Holds when greedy ends within the length (else beam search returns its best finished beam)."""
  cached, _ = toy
  prompt, lengths = jnp.array([[0] * 12, [3] + [0] * 11]), jnp.array([0, 1])
  greedy, _ = _greedy(cached, 2, 12, prompt=prompt, prompt_lengths=lengths)
  assert all(EOS in row for row in np.asarray(greedy).tolist())
  beams, _ = decoding.beam_search(cached, _cache(2), batch=2, beam_size=1, length=12, eos_id=EOS,
                                  alpha=0.0, prompt=prompt, prompt_lengths=lengths)
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
  cached, full = toy
  length, alpha, k = 3, 0.6, 16  # 16 beams cover every live prefix of length <= 2 (4 * 4).
  beams, scores = jax.jit(lambda c: decoding.beam_search(
      cached, c, batch=1, beam_size=k, length=length, eos_id=EOS, alpha=alpha))(_cache(k))
  np.testing.assert_allclose(float(scores[0, 0]), _exhaustive_best(full, length, alpha), rtol=1e-5)
  assert beams.shape == (1, k, length) and beams.dtype == jnp.int32
  # Finished beams first, best first; beams that ran out of length without EOS fill the rest.
  ended = np.array([EOS in row for row in np.asarray(beams)[0].tolist()])
  assert ended[0] and not np.any(ended[np.argmin(ended):]) and not ended.all()
  assert np.all(np.diff(np.asarray(scores)[0][ended]) <= 1e-6)
