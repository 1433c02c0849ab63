"""The train entry point end to end, with the real T5 and the demo mixture at tiny sizes.

Runs the README's documented commands (with small step counts via --gin overrides) once as a
subprocess (the CLI, resuming) and the finetune gins in-process (cheaper: one import of TF/seqio).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import jax
import pytest

from flan_jax import gin_utils, model_dir
from flan_jax.train import cpu_allocator_note, train

TINY = ["--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.BATCH_SIZE=8",
        "--gin.train.infer_eval_examples=8", "--gin.train.num_samples_to_print=2",
        "--gin.train.log_period=5"]


def _cli(*args, cwd=None):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.run([sys.executable, "-m", "flan_jax.train", *args], capture_output=True,
                        text=True, env=env, cwd=cwd, timeout=300, check=False)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """The README's short demo command (fewer eval examples, no start-of-run eval)."""
  out = tmp_path_factory.mktemp("demo") / "run"
  result = _cli("--gin_file=runs/demo.gin", "--gin.TRAIN_STEPS=6", f"--gin.MODEL_DIR='{out}'",
                "--gin.train.infer_eval_at_start=False", *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result.stdout


def test_demo_command_writes_a_complete_model_dir(demo_run):
  out, stdout = demo_run
  final = json.loads(stdout.strip().splitlines()[-1])
  assert final["step"] == 6
  assert any(k.startswith("demo_") and k.endswith("/accuracy") for k in final)
  assert "teacher_forced/loss" in final
  assert "samples" in stdout and "→" in stdout
  assert model_dir.latest_step(out) == 6
  assert model_dir.read_spec(out).family == "t5" and (out / "vocab" / "spiece.model").exists()
  assert "TRAIN_STEPS = 6" in (out / "config.gin").read_text()
  dump = json.loads((out / "partitioning.json").read_text())
  assert any(p["name"].endswith("token_embedder/embedding") for p in dump["params"])
  assert list((out / "train").glob("events.out.tfevents*")) and list((out / "eval").glob("events.out.tfevents*"))


def test_missing_required_macro_is_one_clear_line(tmp_path):
  result = _cli("--gin_file=models/flan_t5_tiny.gin", "--gin_file=runs/finetune.gin", "--gin.TRAIN_STEPS=1")
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "MODEL_DIR" in last and "REQUIRED" in last


def _train_with(model_gin, run_gin, out, steps, lines=None):
  gin.clear_config()
  bindings = [f"MODEL_DIR = '{out}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
              "MIXTURE_OR_TASK_NAME = 'demo'", "VOCABULARY = 'demo'",
              "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}", "train.eval_batches = 1"]
  try:
    gin_utils.parse_gin([model_gin, run_gin], bindings)
    return train(print_fn=(lines.append if lines is not None else lambda _: None))
  finally:
    gin.clear_config()


@pytest.fixture
def compilation_cache(tmp_path_factory):
  """The resumed run compiles the same step functions again: reuse them from a disk cache."""
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", None)


def test_finetune_gin_runs_and_resumes(tmp_path, compilation_cache):  # pylint: disable=unused-argument
  """The documented finetune command, shrunk (demo mixture, short sequences), then rerun longer."""
  metrics = _train_with("models/flan_t5_tiny.gin", "runs/finetune.gin", tmp_path, 2)
  assert "teacher_forced/loss" in metrics and model_dir.latest_step(tmp_path) == 2
  lines = []
  _train_with("models/flan_t5_tiny.gin", "runs/finetune.gin", tmp_path, 3, lines)
  assert any("resumed from step 2" in l for l in lines)
  assert json.loads(lines[-1])["step"] == 3 and model_dir.latest_step(tmp_path) == 3


def test_finetune_decoder_gin_runs(tmp_path):
  metrics = _train_with("models/decoder_tiny.gin", "runs/finetune_decoder.gin", tmp_path, 2)
  assert "teacher_forced/loss" in metrics
  assert model_dir.read_spec(tmp_path).family == "decoder" and model_dir.latest_step(tmp_path) == 2


def test_cpu_hosts_without_malloc_huge_pages_get_a_note(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in cpu_allocator_note()
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert cpu_allocator_note() is None
