"""Gin plumbing of the entry points: file lookup, --gin.KEY=VALUE, and one-line errors."""
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from flan_jax import gin_utils


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_rewrite_gin_args_turns_dotted_flags_into_bindings():
  argv = ["prog", "--gin.TRAIN_STEPS=10", "--gin.MODEL_DIR", "/tmp/x", "--gin_file=runs/demo.gin"]
  assert gin_utils.rewrite_gin_args(argv) == [
      "prog", "--gin_bindings=TRAIN_STEPS = 10", "--gin_bindings=MODEL_DIR = /tmp/x", "--gin_file=runs/demo.gin"]


def test_rewrite_gin_args_without_value_is_a_clear_error():
  with pytest.raises(gin_utils.GinConfigError, match="--gin.TRAIN_STEPS=VALUE"):
    gin_utils.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS"])


def test_packaged_gin_dir_is_the_repo_gin_folder(repo_root):
  assert gin_utils.packaged_gin_dir() == repo_root / "gin"


def test_resolve_relative_gin_file_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = gin_utils.resolve_gin_file("runs/demo.gin")
  assert path == gin_utils.packaged_gin_dir() / "runs" / "demo.gin"


def test_user_search_path_wins_over_packaged(tmp_path):
  (tmp_path / "runs").mkdir()
  (tmp_path / "runs" / "demo.gin").write_text("")
  assert gin_utils.resolve_gin_file("runs/demo.gin", [str(tmp_path)]) == tmp_path / "runs" / "demo.gin"


def test_missing_gin_file_suggests_close_names():
  with pytest.raises(gin_utils.GinConfigError, match=r"'runs/dmeo.gin' not found.*Did you mean: runs/demo.gin"):
    gin_utils.resolve_gin_file("runs/dmeo.gin")


def test_unknown_configurable_is_named_with_suggestions():
  @gin.configurable
  def finetune_fn(steps=1):  # pylint: disable=unused-variable
    return steps

  with pytest.raises(gin_utils.GinConfigError, match="no configurable named 'finetune_fm'.*finetune_fn"):
    gin_utils.parse_gin([], ["finetune_fm.steps = 3"])


def test_unknown_parameter_is_named():
  @gin.configurable
  def some_step(steps=1):  # pylint: disable=unused-variable
    return steps

  with pytest.raises(gin_utils.GinConfigError, match="'some_step' has no parameter 'stpes'"):
    gin_utils.parse_gin([], ["some_step.stpes = 3"])


def test_missing_required_macro_is_explained():
  @gin.configurable
  def needs_dir(model_dir=gin.REQUIRED):
    return model_dir

  with pytest.raises(Exception) as info:
    needs_dir()  # pylint: disable=no-value-for-parameter
  line = gin_utils.explain_missing_required(info.value)
  assert line is not None and "model_dir" in line and "--gin.MODEL_DIR=" in line


def test_entry_point_reports_bad_binding_in_one_line(tmp_path):
  """A typo on the command line of a real entry point ends in a single `error:` line."""
  result = subprocess.run(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=runs/demo.gin", "--gin.TRAIN_STEPZ=3"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, result.stderr[-2000:]
  assert "TRAIN_STEPZ" in errors[0]


def test_binding_an_unused_macro_is_an_error(tmp_path):
  (tmp_path / "base.gin").write_text("TRAIN_STEPS = 3\nsome_fn.steps = %TRAIN_STEPS\n")
  (tmp_path / "run.gin").write_text("include 'base.gin'\n")
  with pytest.raises(gin_utils.GinConfigError, match="macro TRAIN_STEPZ is not used.*Did you mean TRAIN_STEPS"):
    gin_utils._check_macro_bindings(  # pylint: disable=protected-access
        [tmp_path / "run.gin"], ["TRAIN_STEPZ = 4"], [str(tmp_path)])
  gin_utils._check_macro_bindings(  # pylint: disable=protected-access
      [tmp_path / "run.gin"], ["TRAIN_STEPS = 4"], [str(tmp_path)])


def test_required_macro_left_unset_names_the_flag(tmp_path):
  (tmp_path / "run.gin").write_text("MODEL_DIR = %gin.REQUIRED\n")
  with pytest.raises(gin_utils.GinConfigError, match="missing required setting MODEL_DIR.*--gin.MODEL_DIR="):
    gin_utils.parse_gin([str(tmp_path / "run.gin")], [])


@pytest.mark.parametrize("run_gin", sorted(p.name for p in (gin_utils.packaged_gin_dir() / "runs").glob("*.gin")))
def test_every_shipped_run_gin_parses_with_a_model_gin(run_gin):
  model_gin = "models/decoder_tiny.gin" if "decoder" in run_gin else "models/flan_t5_tiny.gin"
  gin_utils.parse_gin([model_gin, f"runs/{run_gin}"], [], finalize=False)
  assert gin.query_parameter("train.batch_size") is not None


def test_unquoted_string_binding_suggests_the_quotes(tmp_path):
  (tmp_path / "run.gin").write_text("MODEL_DIR = None\nfinetune_dir.path = %MODEL_DIR\n")

  @gin.configurable
  def finetune_dir(path=None):  # pylint: disable=unused-variable
    return path

  with pytest.raises(gin_utils.GinConfigError, match=r"""need quotes.*--gin.MODEL_DIR="'/tmp/run'\""""):
    gin_utils.parse_gin([str(tmp_path / "run.gin")], ["MODEL_DIR = /tmp/run"])


def test_includes_resolved_through_search_paths_log_no_errors(caplog):
  """gin probes each search path for `include`s; those misses must not reach the user as ERROR lines."""
  with caplog.at_level("INFO"):
    gin_utils.parse_gin(["models/flan_t5_tiny.gin", "runs/demo.gin"], [], finalize=False)
  assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
