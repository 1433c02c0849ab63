"""infer.py and api.py end to end on a model directory holding a tiny random T5 and the real T5 vocab."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import require_shared_data

from flan_jax import api, infer, model_dir as model_dir_lib
from flan_jax import models
from flan_jax.models import model as model_lib

PROMPTS = ["Is 12 even? OPTIONS: - yes - no", "Translate to German: thank you", "2 + 2 ="]


@pytest.fixture(scope="module")
def model_dir(tiny_t5_model_dir):
  assert isinstance(models.build_model(model_dir_lib.read_spec(tiny_t5_model_dir), tiny_t5_model_dir),
                    model_lib.EncoderDecoderModel)
  return tiny_t5_model_dir


@pytest.fixture(scope="module")
def loaded(model_dir):
  return api.load(model_dir, batch_size=4)


def test_api_generate_matches_predict_batch(loaded):
  texts = loaded.generate(PROMPTS, max_decode_length=8)
  assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  inputs = [loaded.vocabulary.encode(p) + [1] for p in PROMPTS]
  batch = loaded.model.make_batch(inputs, None, 32, 8)
  tokens = np.asarray(loaded.model.predict_batch(loaded.params, batch, max_decode_length=8))
  assert texts == [loaded._detokenize(row) for row in tokens]  # pylint: disable=protected-access
  # More prompts than one batch (4 rows on 8 devices → 8), with a padded last batch.
  assert loaded.generate(PROMPTS * 3, max_decode_length=8) == texts * 3


def test_api_sampling_and_beams(loaded):
  samples = loaded.generate(PROMPTS[:2], decode="sample", num_samples=3, temperature=1.0,
                            topk=20, topp=0.9, max_decode_length=6, seed=1)
  assert [len(s) for s in samples] == [3, 3]
  assert samples == loaded.generate(PROMPTS[:2], decode="sample", num_samples=3, temperature=1.0,
                                    topk=20, topp=0.9, max_decode_length=6, seed=1)
  beams = loaded.generate(PROMPTS[0], decode="beam", beam_size=3, num_samples=2, max_decode_length=6)
  assert isinstance(beams, list) and len(beams) == 2


def test_api_score_is_target_log_likelihood(loaded):
  scores = loaded.score(PROMPTS, ["yes", "danke", "4"])
  assert len(scores) == 3 and all(s < 0 for s in scores)
  vocab = loaded.vocabulary
  batch = loaded.model.make_batch([vocab.encode(PROMPTS[1]) + [1]], [vocab.encode("danke") + [1]], 32, 32)
  logits = loaded.model.module.apply(
      {"params": loaded.params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["decoder_target_tokens"], enable_dropout=False)
  log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64))[0]
  target = batch["decoder_target_tokens"][0]
  expected = sum(log_probs[i, t] for i, t in enumerate(target) if t > 0)
  assert scores[1] == pytest.approx(float(expected), rel=1e-4)
  with pytest.raises(ValueError, match="one target per prompt"):
    loaded.score(PROMPTS, ["yes"])


def test_model_parallel_load_splits_parameters_and_decodes_the_same(model_dir, loaded):
  """model_parallel=4 on 8 devices: mesh data=2 × model=4, the checkpoint restored into shards."""
  split = api.load(model_dir, batch_size=4, model_parallel=4)
  assert dict(split.mesh.shape) == {"data": 2, "fsdp": 1, "model": 4}
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(split.params)]
  assert any("model" in jax.tree.leaves(tuple(spec)) for spec in specs)
  wi = split.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert wi.addressable_shards[0].data.shape[1] == wi.shape[1] // 4  # the mlp axis split 4 ways
  assert split.generate(PROMPTS, max_decode_length=8) == loaded.generate(PROMPTS, max_decode_length=8)
  np.testing.assert_allclose(split.score(PROMPTS, ["yes", "danke", "4"]),
                             loaded.score(PROMPTS, ["yes", "danke", "4"]), rtol=1e-3)


def test_load_t5x_checkpoint_through_the_converter_hook():
  """`flan_jax.load` hands non-flan_jax directories to flan_jax.convert.auto.load_any."""
  import flan_jax  # pylint: disable=import-outside-toplevel
  path = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  loaded = flan_jax.load(path, batch_size=8)
  assert isinstance(loaded.model, model_lib.EncoderDecoderModel)
  assert isinstance(loaded.generate("hello world", max_decode_length=4), str)
  assert loaded.score(["hello"], ["world"])[0] < 0


def test_infer_score_mode_and_text_input(model_dir, tmp_path):
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("\n".join(json.dumps({"inputs": p, "targets": "yes", "id": i})
                             for i, p in enumerate(PROMPTS)) + "\n")
  out = tmp_path / "scores.jsonl"
  assert infer.infer(checkpoint=str(model_dir), input_file=str(pairs), output_file=str(out),
                     mode="score", batch_size=4) == 3
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["id"] for r in rows] == [0, 1, 2]
  assert all(isinstance(r["score"], float) and r["score"] < 0 for r in rows)
  text = tmp_path / "prompts.txt"
  text.write_text("\n".join(PROMPTS) + "\n\n")
  out = tmp_path / "samples.jsonl"
  infer.infer(checkpoint=str(model_dir), input_file=str(text), output_file=str(out), decode="sample",
              num_samples=2, max_decode_length=4, batch_size=4)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["inputs"] for r in rows] == PROMPTS
  assert all(len(r["prediction"]) == 2 for r in rows)
  # A registered SeqIO task as the source: its pretokenized fields and metadata come through.
  out = tmp_path / "task.jsonl"
  assert infer.infer(checkpoint=str(model_dir), task="demo_compare", split="validation",
                     num_examples=2, output_file=str(out), mode="score", batch_size=4) == 2
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert all(r["_task_name"] == "demo_compare" and r["inputs"] and r["score"] < 0 for r in rows)


def test_bad_input_lines_name_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "ok", "targets": "x"}\n{"inputs": "no target"}\n')
  with pytest.raises(infer.InputError, match=r"bad.jsonl:2: --mode=score needs a string field"):
    infer.read_records(bad, "score")
  bad.write_text('{"inputs": "ok"}\nnot json\n')
  with pytest.raises(infer.InputError, match=r"bad.jsonl:2: not valid JSON"):
    infer.read_records(bad, "generate")
  bad.write_text('{"prompt": "wrong key"}\n')
  with pytest.raises(infer.InputError, match=r'bad.jsonl:1: needs a string field "inputs"'):
    infer.read_records(bad, "generate")


def _run_cli(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "flan_jax.infer", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=180, check=False)


def test_readme_command_runs(model_dir, repo_root, tmp_path):
  """Runs the first `python -m flan_jax.infer` command of README's Inference section."""
  readme = (repo_root / "README.md").read_text()
  section = readme[readme.index("## Inference"):]
  command = re.search(r"python -m flan_jax.infer (.*?)\n(?!\s)", section, re.S).group(1)
  args = command.replace("\\\n", " ").split()
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"inputs": p}) + "\n" for p in PROMPTS))
  args = [a.replace("MODEL_DIR", str(model_dir)) for a in args] + ["--gin.infer.batch_size=4"]
  result = _run_cli(args, tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
  assert [r["inputs"] for r in rows] == PROMPTS
  assert all(isinstance(r["prediction"], str) for r in rows)
  # A malformed line is one error naming the file and line, before any model is loaded.
  prompts.write_text('{"inputs": "ok"}\n{"inputs": 3}\n')
  result = _run_cli(args, tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "prompts.jsonl:2" in result.stderr
