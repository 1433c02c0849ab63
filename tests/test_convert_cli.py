"""`python -m flan_jax.convert`: the README's commands on ../shared/data, errors, and load_any."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, require_shared_data
from flan_jax import model_dir
from flan_jax.convert import __main__ as cli
from flan_jax.convert import auto, params as params_lib, t5x


def _readme_commands() -> list[str]:
  text = (REPO_ROOT / "README.md").read_text()
  section = text.split("## Converting checkpoints", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [line for line in block.splitlines() if line.startswith("python -m flan_jax.convert")]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
  """Runs the README's three commands in order: the first as a user would (a subprocess from the
  repo root), the other two through the same entry point in-process (saves two interpreter starts)."""
  require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  require_shared_data("t5_vocab", "t5_spiece.model")
  out = tmp_path_factory.mktemp("readme")
  commands = [c.replace("$OUT", str(out)).split() for c in _readme_commands()]
  assert [c[3] for c in commands] == ["t5x-to-flax", "flax-to-hf", "hf-to-flax"]
  first = subprocess.run([sys.executable, *commands[0][1:]], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OUT": str(out)})
  assert first.returncode == 0, first.stderr[-2000:]
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)  # the README's relative ../shared/data paths
  try:
    for command in commands[1:]:
      assert cli.main(command[3:]) == 0, command
  finally:
    os.chdir(cwd)
  return out


def test_readme_commands_round_trip(readme_run):
  t5x_params = params_lib.flatten(t5x.read_checkpoint(
      require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")).params)
  spec = model_dir.read_spec(readme_run / "t5_tiny")
  assert spec.family == "t5"
  assert (readme_run / "t5_tiny_hf" / "model.safetensors").exists()
  assert (readme_run / "t5_tiny_hf" / "spiece.model").exists()
  # T5X → flax → HF → flax: every parameter is bit-identical to the T5X original.
  again = params_lib.flatten(model_dir.restore_params(readme_run / "t5_tiny_again"))
  assert model_dir.read_spec(readme_run / "t5_tiny_again").config == spec.config
  for name, value in again.items():
    np.testing.assert_array_equal(np.asarray(value).reshape(t5x_params[name].shape),
                                  t5x_params[name], err_msg=name)


def test_load_any_accepts_all_three_formats(readme_run):
  t5x_path = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  vocab = require_shared_data("t5_vocab", "t5_spiece.model")
  results = {name: auto.load_any(path, vocab_path=vocab if name == "t5x" else None)
             for name, path in [("flax", readme_run / "t5_tiny"), ("hf", readme_run / "t5_tiny_hf"),
                                ("t5x", t5x_path)]}
  assert {auto.detect_format(readme_run / "t5_tiny"), auto.detect_format(readme_run / "t5_tiny_hf"),
          auto.detect_format(t5x_path)} == {"flax", "hf", "t5x"}
  reference = params_lib.flatten(results["t5x"][1])
  for name, (spec, params) in results.items():
    assert spec.family == "t5", name
    assert spec.config == results["t5x"][0].config, name
    flat = params_lib.flatten(params)
    assert set(flat) == set(reference), name
    np.testing.assert_array_equal(np.asarray(flat["decoder/logits_dense/kernel"]),
                                  reference["decoder/logits_dense/kernel"], err_msg=name)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
  assert cli.main(["flax-to-hf", "--input", str(tmp_path / "missing"), "--output",
                   str(tmp_path / "o")]) == 1
  assert "is not a flan_jax model directory" in capsys.readouterr().err
  bogus = tmp_path / "bogus.ckpt"
  bogus.write_bytes(b"\x00not msgpack")
  assert cli.main(["t5x-to-flax", "--input", str(bogus), "--output", str(tmp_path / "o"),
                   "--vocab", str(bogus)]) == 1
  assert "is not a T5X checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("config_flags", [["--config", "flan_t5_tiny"],
                                          ["--gin_file", "models/flan_t5_tiny.gin"]])
def test_explicit_config_that_does_not_fit_names_parameters(tmp_path, capsys, config_flags):
  import gin
  ckpt = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  vocab = require_shared_data("t5_vocab", "t5_spiece.model")
  try:
    code = cli.main(["t5x-to-flax", "--input", str(ckpt), "--output", str(tmp_path / "o"),
                     "--vocab", str(vocab), *config_flags])
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert code == 1
  # flan_t5_tiny has emb_dim 32; the checkpoint's d_model is 8.
  assert "parameter decoder/decoder_norm/scale: expected shape (32,), found (8,)" in err, err
  assert not (tmp_path / "o").exists()


def test_unknown_config_name_and_missing_output_flag(tmp_path, capsys):
  ckpt = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  assert cli.main(["t5x-to-flax", "--input", str(ckpt), "--output", str(tmp_path / "o"),
                   "--vocab", str(ckpt), "--config", "flan_t5_tinny"]) == 1
  assert "did you mean flan_t5_tiny" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.run(["t5x-to-flax", "--input", str(ckpt)])  # --output is required (argparse)


def test_scanned_config_imports_and_exports_the_same_tensors(readme_run, tmp_path):
  from safetensors.numpy import load_file
  from flan_jax.convert import core
  ckpt = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  loaded = core.load_t5x(ckpt, vocab_path=readme_run / "t5_tiny_hf" / "spiece.model",
                         scan_layers=True)
  assert loaded.params["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 8, 4, 3)
  assert "layers_0" not in loaded.params["encoder"]
  exported = load_file(str(core.save_hf(loaded, tmp_path / "hf") / "model.safetensors"))
  reference = load_file(str(readme_run / "t5_tiny_hf" / "model.safetensors"))
  assert set(exported) == set(reference)
  for name, value in reference.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
