"""Parity with Hugging Face transformers (PyTorch CPU): random tiny T5 v1.1 (untied) and Llama (GQA).

HF checkpoint → `python -m flan_jax.convert` machinery → flan_jax network in float32: logits within
1e-4 relative error, identical greedy decodes, matching per-example log-likelihoods; HF → flax → HF
and T5X → flax → HF round trips are lossless, and transformers loads the exports.
"""
import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from conftest import require_shared_data  # noqa: E402
from flan_jax import models  # noqa: E402
from flan_jax.convert import core  # noqa: E402
from flan_jax.convert.params import ParamMismatchError  # noqa: E402

RTOL = 1e-4
VOCAB = 96


def _relative_error(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _save_hf(model, config_dict, path, vocab_file, tokenizer_name):
  """Writes a HF dir with every tensor (incl. an untied lm_head), as a released checkpoint has."""
  path.mkdir(parents=True)
  state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
  (path / "config.json").write_text(json.dumps(config_dict))
  shutil.copyfile(vocab_file, path / tokenizer_name)


@pytest.fixture(scope="module")
def hf_t5(tmp_path_factory, t5_vocab_path):
  """Random T5 v1.1 with an lm_head distinct from the shared embedding (transformers 5 ties it)."""
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=3,
      num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 16) * 0.5)
  model.all_tied_weights_keys.pop("lm_head.weight", None)
  with torch.no_grad():  # non-trivial norm scales so a swapped norm would show
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  config_dict = {**config.to_dict(), "tie_word_embeddings": False}
  path = tmp_path_factory.mktemp("hf") / "t5"
  _save_hf(model, config_dict, path, t5_vocab_path, "spiece.model")
  flax_dir = core.hf_to_flax(path, tmp_path_factory.mktemp("flax") / "t5")
  loaded = core.load_flax(flax_dir)
  loaded = loaded._replace(config=dataclasses.replace(loaded.config, dtype="float32"))
  return model, path, flax_dir, loaded


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory, t5_vocab_path):
  torch.manual_seed(1)
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
      rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=64,
      bos_token_id=1, eos_token_id=1, pad_token_id=0)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf") / "llama"
  _save_hf(model, config.to_dict(), path, t5_vocab_path, "tokenizer.model")
  flax_dir = core.hf_to_flax(path, tmp_path_factory.mktemp("flax") / "llama")
  loaded = core.load_flax(flax_dir)
  loaded = loaded._replace(config=dataclasses.replace(loaded.config, dtype="float32"))
  return model, path, flax_dir, loaded


def _wrapper(loaded):
  import seqio
  vocab = seqio.SentencePieceVocabulary(str(loaded.vocab_path), extra_ids=100)
  return models.build_model_from_config(loaded.config, vocab)


def _logits(wrapper, params, batch):
  return jax.jit(lambda p, b: wrapper._logits(p, b, None))(params, batch)  # pylint: disable=protected-access


def _t5_batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, VOCAB, size=(2, 7)).astype(np.int32)
  enc[1, 5:] = 0
  enc[:, 4] = 1
  targets = rng.randint(2, VOCAB, size=(2, 5)).astype(np.int32)
  targets[0, 4] = 1
  targets[1, 3:] = [1, 0]
  dec_in = np.zeros_like(targets)
  dec_in[:, 1:] = targets[:, :-1]
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.int32)}


def _t5_torch_logits(model, batch):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
                attention_mask=torch.tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(batch["decoder_input_tokens"], dtype=torch.long))
  return out.logits.numpy()


def _score_from_logits(logits, targets, weights):
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
  token = np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1)[..., 0]
  return (token * weights).sum(-1)


def test_t5_logits_match_hf(hf_t5):
  model, _, _, loaded = hf_t5
  batch = _t5_batch()
  wrapper = _wrapper(loaded)
  ours = _logits(wrapper, loaded.params, batch)
  theirs = _t5_torch_logits(model, batch)
  # Padding positions of the encoder are masked in both; compare every decoder position.
  assert _relative_error(ours, theirs) < RTOL


def test_t5_scores_match_hf(hf_t5):
  model, _, _, loaded = hf_t5
  batch = _t5_batch()
  ours = np.asarray(_wrapper(loaded).score_batch(loaded.params, batch))
  theirs = _score_from_logits(_t5_torch_logits(model, batch), batch["decoder_target_tokens"],
                              batch["decoder_loss_weights"])
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=1e-4)


def test_t5_greedy_decodes_match_hf(hf_t5):
  model, _, _, loaded = hf_t5
  batch = _t5_batch()
  length = 6
  predict = {**batch, "decoder_target_tokens": np.zeros((2, length), np.int32),
             "decoder_input_tokens": np.zeros((2, length), np.int32)}
  ours = np.asarray(_wrapper(loaded).predict_batch(loaded.params, predict, decode_method="greedy",
                                                   max_decode_length=length))
  with torch.no_grad():
    theirs = model.generate(
        input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
        attention_mask=torch.tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
        do_sample=False, num_beams=1, max_new_tokens=length, min_new_tokens=length,
        eos_token_id=None, use_cache=False).numpy()[:, 1:]  # drop the decoder start token
  compared = 0
  for row_ours, row_theirs in zip(ours, theirs):
    row_theirs = list(row_theirs)
    if 1 in row_theirs:  # flan_jax stops at EOS and pads with 0
      row_theirs = row_theirs[:row_theirs.index(1) + 1]
    assert list(row_ours[:len(row_theirs)]) == row_theirs
    compared += len(row_theirs)
  assert compared >= length  # the random model does not stop at once: real tokens were compared


def test_hf_t5_round_trip_is_lossless(hf_t5, tmp_path):
  _, path, flax_dir, _ = hf_t5
  out = core.flax_to_hf(flax_dir, tmp_path / "export")
  original, exported = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
  assert set(exported) == set(original) - {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
  for name, value in exported.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)
  assert (out / "spiece.model").read_bytes() == (path / "spiece.model").read_bytes()
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  assert not torch.equal(reloaded.lm_head.weight, reloaded.shared.weight)  # stays untied
  batch = _t5_batch()
  assert _relative_error(_t5_torch_logits(reloaded, batch), _t5_torch_logits(hf_t5[0], batch)) == 0


def test_llama_logits_and_scores_match_hf(hf_llama):
  model, _, _, loaded = hf_llama
  rng = np.random.RandomState(3)
  tokens = rng.randint(2, VOCAB, size=(2, 9)).astype(np.int32)
  inputs = np.zeros_like(tokens)
  inputs[:, 1:] = tokens[:, :-1]
  inputs[:, 0] = 1
  batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": tokens,
           "decoder_loss_weights": np.ones_like(tokens)}
  wrapper = _wrapper(loaded)
  ours = _logits(wrapper, loaded.params, batch)
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(inputs, dtype=torch.long)).logits.numpy()
  assert _relative_error(ours, theirs) < RTOL
  np.testing.assert_allclose(np.asarray(wrapper.score_batch(loaded.params, batch)),
                             _score_from_logits(theirs, tokens, np.ones_like(tokens)),
                             rtol=RTOL, atol=1e-4)


def test_hf_llama_round_trip_is_lossless(hf_llama, tmp_path):
  _, path, flax_dir, _ = hf_llama
  out = core.flax_to_hf(flax_dir, tmp_path / "export")
  original, exported = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
  assert set(exported) == set(original)
  for name, value in exported.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)
  reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  ids = torch.tensor([[1, 5, 9, 33, 4]])
  with torch.no_grad():
    assert torch.equal(reloaded(input_ids=ids).logits, hf_llama[0](input_ids=ids).logits)


def test_t5x_legacy_imports_exports_and_matches_transformers(tmp_path, t5_vocab_path):
  ckpt = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  loaded = core.load_t5x(ckpt, vocab_path=t5_vocab_path, dtype="float32")
  flax_dir = core.save_flax(loaded, tmp_path / "flax")
  hf_dir = core.flax_to_hf(flax_dir, tmp_path / "hf")
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  assert reloaded.config.d_model == 8 and reloaded.config.vocab_size == 32128
  batch = _t5_batch()
  ours = _logits(_wrapper(loaded), loaded.params, batch)
  assert _relative_error(ours, _t5_torch_logits(reloaded, batch)) < RTOL
  # T5X → flax → HF is lossless: the exported tensors are the T5X arrays.
  from flan_jax.convert import t5x
  target = t5x.read_checkpoint(ckpt, with_optimizer_state=False).params
  exported = load_file(str(hf_dir / "model.safetensors"))
  np.testing.assert_array_equal(exported["lm_head.weight"], target["decoder"]["logits_dense"]["kernel"].T)
  np.testing.assert_array_equal(
      exported["encoder.block.1.layer.0.SelfAttention.q.weight"],
      target["encoder"]["layers_1"]["attention"]["query"]["kernel"].T)


def test_hf_t5_into_wrong_config_names_the_parameter(hf_t5):
  _, path, _, loaded = hf_t5
  with pytest.raises(ParamMismatchError, match=r"encoder/layers_0/mlp/wi_0/kernel: expected shape"):
    from flan_jax.convert import hf_io, hf_t5 as hf_t5_lib, params as params_lib
    wrong = dataclasses.replace(loaded.config, mlp_dim=32)
    flat = hf_t5_lib.params_from_hf(hf_io.read_state_dict(path), wrong, "test")
    params_lib.fit_params(flat, params_lib.network_param_shapes("t5", wrong), "test")


def test_pickle_weights_need_explicit_flag(hf_t5, tmp_path):
  model, path, _, _ = hf_t5
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copyfile(path / "config.json", pickled / "config.json")
  torch.save(model.state_dict(), pickled / "pytorch_model.bin")
  with pytest.raises(ValueError, match="--allow_pickle"):
    core.load_hf(pickled)
  loaded = core.load_hf(pickled, allow_pickle=True, vocab_path=path / "spiece.model")
  np.testing.assert_array_equal(loaded.params["decoder"]["logits_dense"]["kernel"],
                                model.lm_head.weight.detach().numpy().T)


def test_llama_greedy_decodes_match_hf(hf_llama):
  model, _, _, loaded = hf_llama
  wrapper = _wrapper(loaded)
  prompts = [[1, 17, 40, 8, 61], [1, 5, 77, 90, 12]]  # equal lengths: no padding on the HF side
  length = 6
  batch = wrapper.make_batch(prompts, None, input_length=8, target_length=length)  # padded prompts
  ours = np.asarray(wrapper.predict_batch(loaded.params, batch, decode_method="greedy",
                                          max_decode_length=length))
  # flan_jax's decoder input starts with token 0 (T5X's shifted-targets convention): give HF the same.
  hf_prompts = torch.tensor([[0] + p for p in prompts])
  with torch.no_grad():
    theirs = model.generate(input_ids=hf_prompts, attention_mask=torch.ones_like(hf_prompts),
                            do_sample=False, num_beams=1, max_new_tokens=length,
                            min_new_tokens=length, eos_token_id=None,
                            pad_token_id=0).numpy()[:, hf_prompts.shape[1]:]
  compared = 0
  for row_ours, row_theirs in zip(ours, theirs):
    row_theirs = list(row_theirs)
    if 1 in row_theirs:  # flan_jax stops at EOS (id 1 here) and pads with 0
      row_theirs = row_theirs[:row_theirs.index(1) + 1]
    assert list(row_ours[:len(row_theirs)]) == row_theirs
    compared += len(row_theirs)
  assert compared >= length
