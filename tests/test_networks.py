"""The networks: shapes and dtypes, logical axes on every parameter, KV-cache decoding equal to the
full forward pass (T5, decoder-only MQA and GQA, prefill with a bidirectional prefix), packing
masks, scan/remat equal to the unscanned stack, position encodings, and the gin model configs."""
import dataclasses
import functools
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import attention, configs, decoder, dropout, layers, t5
from flan_jax.models import model as model_lib

VOCAB = 64
LOGICAL_AXES = {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers",
                "relpos_buckets", None}


def _tokens(rng, shape, pad_from=None):
  out = rng.integers(2, VOCAB, size=shape).astype(np.int32)
  if pad_from is not None:
    for row, start in enumerate(pad_from):
      out[row, start:] = 0
  return out


def _shifted(targets):
  out = np.zeros_like(targets)
  out[:, 1:] = targets[:, :-1]
  return out


def _stack_layers(tree):
  """Unscanned params (layers_0, layers_1, ...) → the scanned layout (`layers`, leading axis)."""
  if not isinstance(tree, dict):
    return tree
  names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
  out = {k: _stack_layers(v) for k, v in tree.items() if not k.startswith("layers_")}
  if names:
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[k] for k in names])
  return out


def _init(module, *args, **kwargs):
  """module.init under jit (eager Flax dispatches op by op, far slower than one compile)."""
  return jax.jit(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs))(*args)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---- T5 -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5_net():
  config = dataclasses.replace(configs.CONFIGS["flan_t5_tiny"], vocab_size=VOCAB)
  module = t5.Transformer(config)
  rng = np.random.default_rng(0)
  enc = _tokens(rng, (2, 7), pad_from=[7, 4])
  targets = _tokens(rng, (2, 5))
  dec = _shifted(targets)
  variables = _init(module, enc, dec, targets, enable_dropout=False)
  params = nn.meta.unbox(variables["params"])
  forward = jax.jit(lambda p, e, d: module.apply({"params": p}, e, d, d, enable_dropout=False))
  return module, variables, params, enc, dec, forward, np.asarray(forward(params, enc, dec))


def _boxed_leaves(tree):
  return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]


def _check_logical_axes(boxed_params):
  specs = nn.get_partition_spec(boxed_params)
  for path, leaf in _boxed_leaves(boxed_params):
    name = "/".join(p.key for p in path)
    assert isinstance(leaf, nn.Partitioned), f"{name} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, name
    assert set(leaf.names) <= LOGICAL_AXES, (name, leaf.names)
    assert leaf.value.dtype == jnp.float32, name
  assert len(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))) \
      == len(_boxed_leaves(boxed_params))


def test_t5_param_names_follow_t5x_and_carry_logical_axes(t5_net):
  _, variables, params, *_ = t5_net
  _check_logical_axes(variables["params"])
  flat = {"/".join(p.key for p in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  emb, heads, head_dim, mlp = 32, 4, 8, 64
  expected = {
      "token_embedder/embedding": (VOCAB, emb),
      "encoder/relpos_bias/rel_embedding": (heads, 32),
      "decoder/relpos_bias/rel_embedding": (heads, 32),
      "encoder/layers_1/attention/query/kernel": (emb, heads, head_dim),
      "encoder/layers_0/attention/out/kernel": (heads, head_dim, emb),
      "encoder/layers_0/pre_attention_layer_norm/scale": (emb,),
      "encoder/layers_0/mlp/wi_0/kernel": (emb, mlp),
      "encoder/layers_0/mlp/wo/kernel": (mlp, emb),
      "encoder/encoder_norm/scale": (emb,),
      "decoder/layers_1/self_attention/key/kernel": (emb, heads, head_dim),
      "decoder/layers_1/encoder_decoder_attention/value/kernel": (emb, heads, head_dim),
      "decoder/layers_0/pre_cross_attention_layer_norm/scale": (emb,),
      "decoder/layers_0/pre_self_attention_layer_norm/scale": (emb,),
      "decoder/layers_0/pre_mlp_layer_norm/scale": (emb,),
      "decoder/decoder_norm/scale": (emb,),
      "decoder/logits_dense/kernel": (emb, VOCAB),
  }
  for name, shape in expected.items():
    assert flat.get(name) == shape, name
  # 2 stacks x 2 layers; no biases anywhere.
  assert len(flat) == 1 + (2 + 2 * 9) + (3 + 2 * 14) and not any("bias" in k.split("/")[-1] for k in flat)


def test_t5_bf16_activations_float32_params_and_logits():
  config = dataclasses.replace(configs.CONFIGS["flan_t5_tiny"], vocab_size=VOCAB, dtype="bfloat16")
  module = t5.Transformer(config)
  tokens = jax.ShapeDtypeStruct((3, 6), jnp.int32)
  variables = jax.eval_shape(
      lambda t: module.init(jax.random.PRNGKey(0), t, t, t, enable_dropout=False), tokens)
  assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(variables["params"]))} == {jnp.dtype(jnp.float32)}
  params = nn.meta.unbox(variables["params"])
  logits = jax.eval_shape(lambda p, t: module.apply({"params": p}, t, t, t), params, tokens)
  encoded = jax.eval_shape(lambda p, t: module.apply({"params": p}, t, method=module.encode),
                           params, tokens)
  assert (logits.shape, logits.dtype) == ((3, 6, VOCAB), jnp.float32)
  assert (encoded.shape, encoded.dtype) == ((3, 6, 32), jnp.bfloat16)


def _t5_stepped_logits(module, params, enc, dec, cache):
  """Logits [batch, length, vocab] of feeding `dec` one token at a time through the cache."""
  encoded = jax.jit(lambda p: module.apply({"params": p}, enc, enable_dropout=False,
                                           method=module.encode))(params)

  @jax.jit
  def step(cache, token):
    logits, new = module.apply({"params": params, "cache": cache}, encoded, enc, token, token,
                               enable_dropout=False, decode=True, max_decode_length=dec.shape[1],
                               method=module.decode, mutable=["cache"])
    return logits[:, 0], new["cache"]

  stepped = []
  for i in range(dec.shape[1]):
    logits, cache = step(cache, dec[:, i:i + 1])
    stepped.append(logits)
  return np.stack(stepped, 1), cache


def test_t5_cached_decoding_equals_full_forward(t5_net):
  module, _, params, enc, dec, _, full = t5_net
  cache = _init(module, enc, dec, dec, enable_dropout=False, decode=True)["cache"]
  stepped, cache = _t5_stepped_logits(module, params, enc, dec, cache)
  assert _max_diff(stepped, full) < 1e-5
  encoded = module.apply({"params": params}, enc, enable_dropout=False, method=module.encode)
  with pytest.raises(ValueError, match="one token per call"):
    module.apply({"params": params, "cache": cache}, encoded, enc, dec, dec, enable_dropout=False,
                 decode=True, method=module.decode, mutable=["cache"])


@pytest.mark.parametrize("chunks", [None, 4])
def test_t5_steps_read_the_cross_attention_keys_and_values_written_at_step_0(t5_net, chunks):
  """How the model wrappers decode: step 0 writes the `encoder_kv` collection, later steps only
  read it (their cross-attention key/value kernels are NaN here and the logits stay exact), as
  written or split into `chunks` of rows (`attention.split_encoder_kv`, as on CPU)."""
  module, _, params, enc, dec, _, full = t5_net
  variables = _init(module, enc, dec, dec, enable_dropout=False, decode=True)
  encoded = module.apply({"params": params}, enc, enable_dropout=False, method=module.encode)
  heads, head_dim = module.config.num_heads, module.config.head_dim
  kv = variables[layers.ENCODER_KV]["decoder"]["layers_1"]["encoder_decoder_attention"]
  assert kv["cached_key"].shape == (2, heads, head_dim, enc.shape[1])
  assert kv["cached_value"].shape == (2, heads, enc.shape[1], head_dim)

  @functools.partial(jax.jit, static_argnums=3)
  def step(params, collections, token, mutable):
    logits, new = module.apply({"params": params, **collections}, encoded, enc, token, token,
                               enable_dropout=False, decode=True, max_decode_length=dec.shape[1],
                               method=module.decode, mutable=mutable)
    return logits[:, 0], new

  logits, written = step(params, variables, dec[:, :1], ("cache", layers.ENCODER_KV))
  stepped, cache = [logits], written["cache"]
  encoder_kv = written[layers.ENCODER_KV]
  if chunks:
    encoder_kv = attention.split_encoder_kv(encoder_kv, chunks=chunks)
    assert len(jax.tree.leaves(encoder_kv)) == 4 * len(jax.tree.leaves(written[layers.ENCODER_KV]))
  def poison(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return x * np.nan if re.search(r"encoder_decoder_attention/(key|value)/", name) else x
  nan_kv = jax.tree_util.tree_map_with_path(poison, params)
  for i in range(1, dec.shape[1]):
    logits, new = step(nan_kv, {"cache": cache, layers.ENCODER_KV: encoder_kv},
                       dec[:, i:i + 1], ("cache",))
    stepped.append(logits)
    cache = new["cache"]
  assert _max_diff(np.stack(stepped, 1), full) < 1e-5
  rewritten, _ = step(nan_kv, written, dec[:, 1:2], ("cache", layers.ENCODER_KV))
  assert np.isnan(np.asarray(rewritten)).all()  # a writing call projects with the kernels


def test_bf16_t5_decodes_alike_from_a_bf16_or_float32_cache(t5_net):
  """The model wrappers keep the cache in float32 on CPU (`model.CPU_DECODE_LAYOUT`)."""
  f32_module, _, params, enc, dec, _, _ = t5_net
  module = t5.Transformer(dataclasses.replace(f32_module.config, dtype="bfloat16"))
  full = np.asarray(jax.jit(lambda p: module.apply({"params": p}, enc, dec, dec,
                                                   enable_dropout=False))(params))
  dtypes = lambda tree: {x.dtype.name for x in jax.tree.leaves(tree)}
  bf16_cache = _init(module, enc, dec, dec, enable_dropout=False, decode=True)["cache"]
  assert dtypes(bf16_cache) == {"bfloat16", "int32"}
  f32_cache = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x,
                           bf16_cache)
  from_bf16, _ = _t5_stepped_logits(module, params, enc, dec, bf16_cache)
  from_f32, cache = _t5_stepped_logits(module, params, enc, dec, f32_cache)
  assert dtypes(cache) == {"float32", "int32"}  # the steps write in the cache's own dtype
  scale = float(np.max(np.abs(full)))
  assert _max_diff(from_bf16, full) < 0.03 * scale
  assert _max_diff(from_f32, full) < 0.03 * scale
  assert _max_diff(from_f32, from_bf16) < 0.03 * scale


def test_params_on_cpu_for_device_and_host_arrays():
  assert model_lib.params_on_cpu({"w": jnp.ones(2)})  # on CPU devices
  assert model_lib.params_on_cpu({"w": np.ones(2)})  # host arrays: the default backend's answer


@pytest.mark.parametrize("rows, chunks", [(6, 1), (9, 1), (10, 10), (12, 12), (48, 16), (34, 17),
                                          (64, 16), (96, 16), (102, 17)])
def test_encoder_kv_chunks_pass_the_thunk_executors_split_threshold(rows, chunks):
  assert attention.encoder_kv_chunks(rows) == chunks


def test_split_encoder_kv_chunks_rows_under_an_optional_layers_axis():
  x = jnp.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
  split = attention.split_encoder_kv({"a": {"cached_key": x}}, chunks=3)["a"]["cached_key"]
  assert [c.shape for c in split] == [(2, 4, 5)] * 3
  np.testing.assert_array_equal(np.concatenate(split), x.reshape(6, 4, 5))
  stacked = attention.split_encoder_kv(x[None], batch_axis=1, chunks=2)
  assert [c.shape for c in stacked] == [(1, 3, 4, 5)] * 2


def _ynn_fusion_opcodes(compiler_options):
  """The opcodes inside each YNNPACK fusion XLA:CPU makes of a product followed by a softmax."""
  fn = lambda x, w: jax.nn.softmax(jnp.dot(x, w, preferred_element_type=jnp.float32), axis=-1)
  x, w = jnp.ones((64, 128), jnp.bfloat16), jnp.ones((128, 256), jnp.bfloat16)
  hlo = jax.jit(fn, compiler_options=compiler_options).lower(x, w).compile().as_text()
  computations = dict(re.findall(r"\n(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
  called = re.findall(r"fusion\([^\n]*calls=(%[\w.\-]+)[^\n]*__ynn_fusion", hlo)
  return [set(re.findall(r"= \S+ (\w[\w\-]*)\(", computations[name])) for name in called]


def test_cpu_predict_options_give_ynnpack_the_products_alone():
  """`CPU_PREDICT_COMPILER_OPTIONS` as this jaxlib reads them (a renamed option fails here)."""
  assert any("reduce" in ops for ops in _ynn_fusion_opcodes(None))  # XLA:CPU's default
  assert _ynn_fusion_opcodes(model_lib.CPU_PREDICT_COMPILER_OPTIONS) == [{"dot", "parameter"}]
  assert model_lib.params_on_cpu({"w": jnp.ones(2)})


def test_t5_packing_masks_isolate_segments(t5_net):
  module, _, params, *_ = t5_net
  rng = np.random.default_rng(1)
  enc_a, enc_b = _tokens(rng, (1, 4)), _tokens(rng, (1, 3))
  tgt_a, tgt_b = _tokens(rng, (1, 2)), _tokens(rng, (1, 3))
  apply = lambda e, d, **kw: np.asarray(jax.jit(functools.partial(
      module.apply, enable_dropout=False))({"params": params}, e, d, d, **kw))
  alone_b = apply(enc_b, _shifted(tgt_b))
  packed_enc = np.concatenate([enc_a, enc_b, np.zeros((1, 1), np.int32)], 1)
  packed_dec = np.concatenate([_shifted(tgt_a), _shifted(tgt_b), np.zeros((1, 1), np.int32)], 1)
  packed = apply(packed_enc, packed_dec,
                 encoder_segment_ids=np.array([[1, 1, 1, 1, 2, 2, 2, 0]]),
                 decoder_segment_ids=np.array([[1, 1, 2, 2, 2, 0]]))
  assert _max_diff(packed[:, 2:5], alone_b) < 1e-5
  # Without segment ids the second example would see the first one.
  assert _max_diff(apply(packed_enc, packed_dec)[:, 2:5], alone_b) > 1e-3


def test_t5_scan_and_remat_equal_unscanned(t5_net):
  module, _, params, enc, dec, _, full = t5_net
  # Scanned + rematerialized (the scanned decoder-only variant below uses remat_policy='full').
  other = t5.Transformer(dataclasses.replace(module.config, scan_layers=True,
                                             remat_policy="dots_saveable"))
  boxed = _init(other, enc, dec, dec, enable_dropout=False)["params"]
  _check_logical_axes(boxed)
  mapped = _stack_layers(params)
  assert jax.tree.map(np.shape, nn.meta.unbox(boxed)) == jax.tree.map(np.shape, mapped)
  assert boxed["encoder"]["layers"]["attention"]["query"]["kernel"].names[0] == "layers"
  logits = jax.jit(lambda p: other.apply({"params": p}, enc, dec, dec, enable_dropout=False))(mapped)
  assert _max_diff(logits, full) < 1e-5
  with pytest.raises(ValueError, match="unknown remat_policy 'sometimes'"):
    bad = t5.Transformer(dataclasses.replace(module.config, remat_policy="sometimes"))
    jax.eval_shape(lambda: bad.init(jax.random.PRNGKey(0), enc, dec, dec, enable_dropout=False))


def test_t5_remat_gradients_equal_no_remat(t5_net):
  """Rematerialized layers give the same parameter gradients; 'dots_saveable' really saves the
  (custom-VJP) matmuls: its backward pass recomputes none, unlike 'full'."""
  module, _, params, enc, dec, _, _ = t5_net
  weights = np.random.default_rng(7).normal(size=(*dec.shape, VOCAB)).astype(np.float32)

  def grad_fn(policy, scan):
    net = t5.Transformer(dataclasses.replace(module.config, remat_policy=policy, scan_layers=scan))
    loss = lambda p: jnp.sum(net.apply({"params": p}, enc, dec, dec, enable_dropout=False) * weights)
    return jax.grad(loss)

  tree_diff = lambda a, b: max(jax.tree.leaves(jax.tree.map(_max_diff, a, b)))
  reference = jax.jit(grad_fn("none", False))(params)
  assert tree_diff(jax.jit(grad_fn("full", False))(params), reference) < 1e-5
  scanned = jax.jit(grad_fn("dots_saveable", True))(_stack_layers(params))
  assert tree_diff(scanned, _stack_layers(reference)) < 1e-5
  count_dots = lambda policy: str(jax.make_jaxpr(grad_fn(policy, False))(params)).count("dot_general")
  assert count_dots("dots_saveable") == count_dots("none") < count_dots("full")


# ---- Decoder-only ---------------------------------------------------------------------------------

DECODER_VARIANTS = {
    # PaLM: parallel block, multi-query, tied + scaled logits.
    "palm_mqa": {},
    # Llama: sequential block, grouped-query (2 kv heads for 4 query heads), untied head, scanned.
    "llama_gqa_scanned": dict(parallel_block=False, num_kv_heads=2, logits_via_embedding=False,
                              scale_tied_logits=False, layer_norm_epsilon=1e-5, rope_theta=500.0,
                              scan_layers=True, remat_policy="full"),
}


@pytest.fixture(scope="module", params=sorted(DECODER_VARIANTS))
def lm_net(request):
  config = dataclasses.replace(configs.CONFIGS["decoder_tiny"], vocab_size=VOCAB,
                               **DECODER_VARIANTS[request.param])
  module = decoder.DecoderOnly(config)
  tokens = _tokens(np.random.default_rng(2), (2, 7))
  variables = _init(module, tokens, tokens, enable_dropout=False)
  params = jax.tree.map(lambda x: x * 2.0, nn.meta.unbox(variables["params"]))
  return module, variables, params, tokens


def test_decoder_params_and_logical_axes(lm_net):
  module, variables, params, tokens = lm_net
  _check_logical_axes(variables["params"])
  cfg = module.config
  stack = params["decoder"]["layers"] if cfg.scan_layers else params["decoder"]["layers_0"]
  lead = (cfg.num_layers,) if cfg.scan_layers else ()
  assert stack["self_attention"]["key"]["kernel"].shape == lead + (32, cfg.num_kv_heads, 8)
  assert stack["self_attention"]["query"]["kernel"].shape == lead + (32, 4, 8)
  assert ("pre_mlp_layer_norm" in stack) == (not cfg.parallel_block)
  assert ("logits_dense" in params["decoder"]) == (not cfg.logits_via_embedding)
  logits = jax.eval_shape(functools.partial(module.apply, enable_dropout=False),
                          {"params": params}, tokens, tokens)
  assert logits.shape == (2, 7, VOCAB) and logits.dtype == jnp.float32


def test_decoder_cached_decoding_and_prefill_equal_full_forward(lm_net):
  module, _, params, tokens = lm_net
  batch, length = tokens.shape
  prefix = np.zeros_like(tokens)
  prefix[:, :4] = 1  # the first 4 positions attend bidirectionally (prefix-LM)
  full_apply = jax.jit(lambda ca: module.apply({"params": params}, tokens, tokens,
                                               decoder_causal_attention=ca, enable_dropout=False))
  causal, prefix_lm = np.asarray(full_apply(None)), np.asarray(full_apply(prefix))
  assert _max_diff(causal[:, 4:], prefix_lm[:, 4:]) > 1e-4  # the prefix changes what follows
  cache0 = _init(module, tokens, tokens, enable_dropout=False, decode=True)["cache"]

  @jax.jit
  def step(cache, token):
    logits, new = module.apply({"params": params, "cache": cache}, token, token,
                               enable_dropout=False, decode=True, mutable=["cache"])
    return logits[:, 0], new["cache"]

  cache, stepped = cache0, []
  for i in range(length):
    logits, cache = step(cache, tokens[:, i:i + 1])
    stepped.append(logits)
  assert _max_diff(np.stack(stepped, 1), causal) < 1e-5

  prompt_logits, variables = jax.jit(functools.partial(
      module.apply, enable_dropout=False, decode=True, prefill=True, mutable=["cache"]))(
          {"params": params, "cache": cache0}, tokens[:, :4], tokens[:, :4],
          decoder_causal_attention=prefix[:, :4])
  assert _max_diff(prompt_logits, prefix_lm[:, :4]) < 1e-5
  cache = variables["cache"]
  for i in range(4, length):
    logits, cache = step(cache, tokens[:, i:i + 1])
    assert _max_diff(logits, prefix_lm[:, i]) < 1e-5


def test_decoder_packing_isolates_segments(lm_net):
  module, _, params, _ = lm_net
  rng = np.random.default_rng(4)
  a, b = _tokens(rng, (1, 3)), _tokens(rng, (1, 4))
  apply = lambda t, **kw: np.asarray(jax.jit(functools.partial(
      module.apply, enable_dropout=False))({"params": params}, t, t, **kw))
  packed = apply(np.concatenate([a, b], 1), decoder_segment_ids=np.array([[1, 1, 1, 2, 2, 2, 2]]),
                 decoder_positions=np.array([[0, 1, 2, 0, 1, 2, 3]]))
  assert _max_diff(packed[:, 3:], apply(b)) < 1e-5


# ---- Position encodings ---------------------------------------------------------------------------

def test_relative_position_buckets():
  bucket = lambda rel, bidirectional: np.asarray(attention.relative_position_bucket(
      jnp.array(rel), bidirectional=bidirectional, num_buckets=32, max_distance=128)).tolist()
  # memory - query: keys before the query are negative; bidirectional gives keys after 16..31.
  assert bucket([0, -1, -7, -8, -15, -16, -127, -500], True) == [0, 1, 7, 8, 9, 10, 15, 15]
  assert bucket([1, 7, 8, 500], True) == [17, 23, 24, 31]
  assert bucket([0, -1, -15, -16, -31, -32, -127, -128, -1000, 5], False) == \
      [0, 1, 15, 16, 21, 21, 31, 31, 31, 0]


def test_rope_rotates_halves_like_hugging_face():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
  positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 0, 1]])
  inv_freq = 1.0 / (10000.0 ** (np.arange(0, 8, 2) / 8))
  angles = positions[..., None] * inv_freq
  emb = np.concatenate([angles, angles], -1)[:, :, None, :]
  rotate_half = np.concatenate([-x[..., 4:], x[..., :4]], -1)
  expected = x * np.cos(emb) + rotate_half * np.sin(emb)
  assert _max_diff(attention.apply_rope(jnp.array(x), jnp.array(positions), 10000.0), expected) < 1e-5


# ---- Configs and gin ------------------------------------------------------------------------------

def test_model_gin_files_bind_model_config(repo_root):
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(repo_root / "gin" / "models" / "flan_t5_small.gin")],
        ["configs.model_config.overrides = {'scan_layers': True}"])
    config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert config == dataclasses.replace(configs.CONFIGS["flan_t5_small"], scan_layers=True)
  for name in configs.CONFIGS:
    assert f"'{name}'" in (repo_root / "gin" / "models" / f"{name}.gin").read_text()
  with pytest.raises(ValueError, match=r"unknown model config 'flan_t5_smal'; did you mean flan_t5_small"):
    configs.model_config("flan_t5_smal")
  with pytest.raises(ValueError, match=r"names \['emb'\], which T5Config does not have"):
    configs.model_config("flan_t5_small", {"emb": 3})


def test_gqa_requires_divisible_heads():
  module = decoder.DecoderOnly(dataclasses.replace(configs.CONFIGS["decoder_tiny"], num_kv_heads=3))
  with pytest.raises(ValueError, match="num_heads=4 is not a multiple of num_kv_heads=3"):
    jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32),
                                       enable_dropout=False))


# ---- Attention scores in bfloat16 -----------------------------------------------------------------

@pytest.mark.parametrize("bias_rows", [1, 2])
@pytest.mark.parametrize("custom", ["biased_softmax", "add_bias_and_mask"])
def test_biased_softmax_matches_autodiff_of_the_plain_formula(bias_rows, custom):
  """The custom VJPs (bias summed over the batch when shared, masked entries zero) are exact in
  f32: the bf16-scores softmax, and the float32 path's addition of bias and mask."""
  rng = np.random.default_rng(0)
  logits = jnp.array(rng.normal(size=(2, 3, 1, 5, 6)), jnp.float32)
  bias = jnp.array(rng.normal(size=(bias_rows, 3, 1, 5, 6)), jnp.float32)
  mask = jnp.array(rng.random((2, 1, 1, 5, 6)) < 0.7).at[..., 0].set(True)
  cotangent = jnp.array(rng.normal(size=logits.shape), jnp.float32)
  plain = lambda l, b: jax.nn.softmax(jnp.where(mask, l + b, -1e10), axis=-1)
  if custom == "biased_softmax":
    ours = lambda l, b: attention._biased_softmax(l, b, mask)
  else:
    ours = lambda l, b: jax.nn.softmax(attention._add_bias_and_mask(l, b, mask), axis=-1)
  expected, expected_vjp = jax.vjp(plain, logits, bias)
  got, got_vjp = jax.vjp(ours, logits, bias)
  assert _max_diff(got, expected) < 1e-6
  for g, e in zip(got_vjp(cotangent), expected_vjp(cotangent)):
    assert g.shape == e.shape and _max_diff(g, e) < 1e-6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_heads_first_scores_product_matches_mixed_einsum(dtype):
  """`attention._scores` (operands transposed before the product on CPU, plain products in the
  backward) gives mixed_einsum's values and gradients."""
  rng = np.random.default_rng(2)
  query = jnp.array(rng.normal(size=(2, 5, 2, 3, 4)), dtype)
  key = jnp.array(rng.normal(size=(2, 6, 2, 4)), dtype)
  cotangent = jnp.array(rng.normal(size=(2, 2, 3, 5, 6)), jnp.float32)
  spec = "bqkgd,bskd->bkgqs"
  expected, expected_vjp = jax.vjp(lambda q, k: layers.mixed_einsum(spec, q, k, dtype), query, key)
  got, got_vjp = jax.vjp(attention._scores, query, key)
  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
  assert got.dtype == jnp.float32 and _max_diff(got, expected) < tolerance
  for g, e in zip(got_vjp(cotangent), expected_vjp(cotangent)):
    assert g.dtype == dtype and g.shape == e.shape and _max_diff(g, e) < tolerance


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_bf16_attention_scores_stay_close_to_f32(dtype):
  """scores_dtype=bfloat16 (TPU option) vs the float32 default, forward and all gradients (GQA,
  shared bias, padding mask). bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%):
  rounding the scores (|s| ≲ 4 here) moves each logit by ≲ 0.01, so the probabilities and the
  output by ≲ 1%, plus ≈ 0.2% for storing the probabilities: 2% of the largest entry bounds it
  (measured: ≤ 0.5% with float32 activations, ≤ 0.8% with bfloat16 ones)."""
  rng = np.random.default_rng(1)
  x = jnp.array(rng.normal(size=(2, 7, 16)), jnp.float32)
  bias = jnp.array(2 * rng.normal(size=(1, 4, 7, 7)), jnp.float32)
  mask = attention.padding_mask(jnp.ones((2, 7), bool), jnp.arange(7)[None, :] < jnp.array([[7], [4]]))
  weights = jnp.array(rng.normal(size=(2, 7, 16)), jnp.float32)

  def run(scores_dtype):
    attn = attention.MultiHeadAttention(4, 2, 8, dtype=dtype, scores_dtype=scores_dtype)
    params = attn.init(jax.random.PRNGKey(0), x, x, mask=mask, bias=bias)
    loss = lambda p, x, b: jnp.sum(attn.apply(p, x, x, mask=mask, bias=b).astype(jnp.float32)
                                   * weights)
    out = attn.apply(params, x, x, mask=mask, bias=bias).astype(jnp.float32)
    return out, jax.grad(loss, argnums=(0, 1, 2))(params, x, bias)

  reference, reference_grads = run(jnp.float32)
  low, low_grads = run(jnp.bfloat16)
  relative = lambda a, b: _max_diff(a, b) / float(jnp.max(jnp.abs(b)))
  assert 0 < relative(low, reference) < 2e-2
  pairs = list(zip(jax.tree.leaves(low_grads), jax.tree.leaves(reference_grads)))
  assert len(pairs) == 6  # query, key, value, out kernels; x; bias
  for g, e in pairs:
    assert g.shape == e.shape and relative(g, e) < 2e-2


def test_attention_scores_dtype_reaches_t5_and_decoder_attention(t5_net, lm_net):
  """`attention_scores_dtype` in the config changes the networks' numbers, slightly."""
  module, _, params, enc, dec, _, logits = t5_net
  bf16 = t5.Transformer(dataclasses.replace(module.config, attention_scores_dtype="bfloat16"))
  other = np.asarray(bf16.apply({"params": params}, enc, dec, dec, enable_dropout=False))
  assert 0 < _max_diff(other, logits) < 0.05 * np.max(np.abs(logits))
  lm, _, lm_params, tokens = lm_net
  full = np.asarray(lm.apply({"params": lm_params}, tokens, tokens, enable_dropout=False))
  lm_bf16 = decoder.DecoderOnly(dataclasses.replace(lm.config, attention_scores_dtype="bfloat16"))
  other = np.asarray(lm_bf16.apply({"params": lm_params}, tokens, tokens, enable_dropout=False))
  assert 0 < _max_diff(other, full) < 0.05 * np.max(np.abs(full))


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_attention_dropout_rate_scale_independence_and_determinism(rate):
  """16 random bits per decision: the keep fraction is 1 - rate, the kept weights are scaled so
  the mean is unchanged, the four quarters of one threefry block decide independently, and the
  mask is a function of the key only (a key length that is not a multiple of 4 included)."""
  weights = jnp.ones((4, 6, 64, 513), jnp.float32)
  out = np.asarray(dropout.attention_dropout(weights, rate, jax.random.key(0)))
  dropped = out == 0
  sigma = np.sqrt(rate * (1 - rate) / dropped.size)
  assert abs(dropped.mean() - rate) < 4 * sigma
  assert abs(out.mean() - 1.0) < 4 * sigma / (1 - rate)
  np.testing.assert_allclose(out[~dropped], 1.0 / (1.0 - rate), rtol=1e-4)
  # Columns j, j + 129, j + 258 and j + 387 come from the same threefry block (129 = ceil(513 / 4)).
  for offset in (129, 258, 387):
    both = (dropped[..., :126] & dropped[..., offset:offset + 126]).mean()
    assert abs(both - rate ** 2) < 4 * np.sqrt(rate ** 2 / dropped[..., :126].size)
  again = np.asarray(dropout.attention_dropout(weights, rate, jax.random.key(0)))
  np.testing.assert_array_equal(again, out)
  assert (np.asarray(dropout.attention_dropout(weights, rate, jax.random.key(1))) != out).any()


@pytest.mark.parametrize("spec,shape_a,shape_b", [
    ("...a,ab->...b", (2, 3, 8), (8, 5)),  # DenseGeneral
    ("...ab,abc->...c", (2, 3, 4, 6), (4, 6, 5)),  # the attention output projection
    ("bqkgd,bkds->bkgqs", (2, 5, 3, 2, 4), (2, 3, 4, 7)),  # scores, keys as [b, k, d, s]
    ("bkgqs,bkds->bqkgd", (2, 3, 2, 5, 7), (2, 3, 4, 7)),  # probabilities · values
    ("bqkgd,bskd->bkgqs", (2, 5, 3, 2, 4), (2, 7, 3, 4)),
])
def test_mixed_einsum_gradients_equal_autodiff(spec, shape_a, shape_b):
  """The custom VJP (products ordered so XLA need not transpose the big operand) is the einsum's
  gradient: float32 operands against jax's autodiff of jnp.einsum."""
  ka, kb, kg = jax.random.split(jax.random.key(0), 3)
  a = jax.random.normal(ka, shape_a)
  b = jax.random.normal(kb, shape_b)
  cot = jax.random.normal(kg, jnp.einsum(spec, a, b).shape)
  ours = jax.grad(lambda a, b: jnp.sum(layers.mixed_einsum(spec, a, b, jnp.float32) * cot), (0, 1))
  ref = jax.grad(lambda a, b: jnp.sum(jnp.einsum(spec, a, b, precision="highest") * cot), (0, 1))
  for x, y in zip(jax.jit(ours)(a, b), jax.jit(ref)(a, b)):
    assert x.shape == y.shape
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
  # The plain einsums other platforms run (platform_dependent picks the untransposed ones on CPU).
  spec_in, out = spec.split("->")
  spec_a, spec_b = (layers._expand_ellipsis(sp, x.ndim) for sp, x in zip(spec_in.split(","), (a, b)))
  specs = (spec_a, spec_b, layers._expand_ellipsis(out, cot.ndim))
  for x, y in zip(layers._grads_plain(*specs, a, b, cot), layers._grads_untransposed(*specs, a, b, cot)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_probs_times_values_forms_agree():
  """The CPU form (custom VJP: values heads-first in the forward product, [batch, kv_heads,
  head_dim, k] in the backward ones) and the plain one other platforms run give the same output
  and gradients."""
  kw, kv = jax.random.split(jax.random.key(0))
  weights = jax.nn.softmax(jax.random.normal(kw, (2, 3, 2, 5, 7)), axis=-1)
  value = jax.random.normal(kv, (2, 7, 3, 4))
  loss = lambda f: lambda w, v: jnp.sum(f(w, v, jnp.float32) ** 2)
  for x, y in zip(jax.grad(loss(attention.probs_times_values), (0, 1))(weights, value),
                  jax.grad(loss(attention.probs_times_values_untransposed), (0, 1))(weights, value)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(attention.probs_times_values(weights, value, jnp.float32)),
                             np.asarray(attention.probs_times_values_untransposed(weights, value,
                                                                              jnp.float32)),
                             rtol=1e-6)


def test_bernoulli_dropout_other_platforms_use_keeps_the_mean():
  weights = jnp.ones((4, 64, 512), jnp.float32)
  out = np.asarray(dropout.bernoulli_dropout(weights, 0.1, jax.random.key(0)))
  assert abs((out == 0).mean() - 0.1) < 0.01 and abs(out.mean() - 1.0) < 0.02


def test_threefry2x32_equals_jax_threefry():
  """The fused hash behind attention_dropout is jax's Threefry-2x32, bit for bit."""
  from jax.extend.random import threefry2x32_p  # pylint: disable=import-outside-toplevel
  words = np.random.default_rng(0).integers(0, 2 ** 32, (4, 1000), dtype=np.uint64).astype(np.uint32)
  k0, k1 = jnp.uint32(words[0, 0]), jnp.uint32(words[1, 0])
  x0, x1 = jnp.asarray(words[2]), jnp.asarray(words[3])
  for ours, theirs in zip(jax.jit(dropout._threefry2x32)(k0, k1, x0, x1),
                          threefry2x32_p.bind(k0, k1, x0, x1)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
