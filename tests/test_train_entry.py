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
import pytest

from flan_jax import gin_utils, model_dir
from flan_jax.train import train

TINY = ["--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.BATCH_SIZE=8",
        "--gin.train.infer_eval_examples=8", "--gin.train.num_samples_to_print=2",
        "--gin.train.log_period=5"]


def _cli(*args, cwd=None):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.run([sys.executable, "-m", "flan_jax.train", *args], capture_output=True,
                        text=True, env=env, cwd=cwd, timeout=300, check=False)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo") / "run"
  first = _cli("--gin_file=runs/demo.gin", "--gin.TRAIN_STEPS=10", f"--gin.MODEL_DIR='{out}'", *TINY)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _cli("--gin_file=runs/demo.gin", "--gin.TRAIN_STEPS=15", f"--gin.MODEL_DIR='{out}'", *TINY)
  assert second.returncode == 0, second.stderr[-3000:]
  return out, first.stdout, second.stdout


def test_demo_command_writes_a_complete_model_dir(demo_run):
  out, stdout, _ = demo_run
  final = json.loads(stdout.strip().splitlines()[-1])
  assert final["step"] == 10
  assert any(k.startswith("demo_") and k.endswith("/accuracy") for k in final)
  assert "teacher_forced/loss" in final
  assert "samples" in stdout and "→" in stdout
  assert model_dir.latest_step(out) == 10
  assert model_dir.read_spec(out).family == "t5" and (out / "vocab" / "spiece.model").exists()
  assert "train.train_steps = 10" in (out / "config.gin").read_text()
  dump = json.loads((out / "partitioning.json").read_text())
  assert any(p["name"].endswith("token_embedder/embedding") for p in dump["params"])
  assert list((out / "train").glob("events.out.tfevents*")) and list((out / "eval").glob("events.out.tfevents*"))


def test_rerun_resumes_from_the_latest_checkpoint(demo_run):
  out, _, stdout = demo_run
  assert "resumed from step 10" in stdout
  assert json.loads(stdout.strip().splitlines()[-1])["step"] == 15
  assert model_dir.latest_step(out) == 15


def test_missing_required_macro_is_one_clear_line(tmp_path):
  result = _cli("--gin_file=models/flan_t5_tiny.gin", "--gin_file=runs/finetune.gin", "--gin.TRAIN_STEPS=1")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: missing required setting")
  assert "MODEL_DIR" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("model_gin,run_gin", [
    ("models/flan_t5_tiny.gin", "runs/finetune.gin"),
    ("models/decoder_tiny.gin", "runs/finetune_decoder.gin")])
def test_finetune_gins_run(tmp_path, model_gin, run_gin):
  """The documented finetune commands, shrunk: demo mixture, short sequences, two steps."""
  gin.clear_config()
  bindings = [f"MODEL_DIR = '{tmp_path}'", "TRAIN_STEPS = 2", "BATCH_SIZE = 8",
              "MIXTURE_OR_TASK_NAME = 'demo'", "VOCABULARY = 'demo'",
              "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}", "train.eval_batches = 1"]
  try:
    gin_utils.parse_gin([model_gin, run_gin], bindings)
    metrics = train(print_fn=lambda _: None)
  finally:
    gin.clear_config()
  assert "teacher_forced/loss" in metrics
  assert model_dir.latest_step(tmp_path) == 2
