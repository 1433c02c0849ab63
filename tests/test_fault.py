"""Fault tolerance: SIGKILL at random points and during a save, SIGTERM, NaN loss.

Training runs in a subprocess (the harness below: the real `run_loop`, Checkpointer and Trainer
with the toy model of test_trainer.py and a deterministic batch stream that honours the saved
skip count), so it can be killed for real.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from flan_jax import checkpoints, optim, partitioning
from flan_jax.metrics import MetricsLogger
from flan_jax.train import _initial_state, run_loop
from flan_jax.trainer import NonFiniteLossError, Trainer

TESTS_DIR = Path(__file__).resolve().parent
END_STEP = 12

HARNESS = r'''
import asyncio, os, sys, time
sys.path.insert(0, os.environ["TESTS_DIR"])
import numpy as np
from orbax.checkpoint._src.path import async_path
from flan_jax import checkpoints, optim, partitioning
from flan_jax.metrics import MetricsLogger
from flan_jax.train import _initial_state, run_loop
from flan_jax.trainer import Trainer
from test_trainer import SHAPES, ToyModel, toy_batches

model_dir, end_step = sys.argv[1], int(sys.argv[2])
slow_step = os.environ.get("SLOW_FINALIZE_STEP")
_rename = async_path.rename

async def slow_rename(src, dst, *args, **kwargs):
  if slow_step is not None and str(dst).rstrip("/").endswith("/" + slow_step):
    print(f"FINALIZING {slow_step}", flush=True)
    await asyncio.sleep(60)
  return await _rename(src, dst, *args, **kwargs)

async_path.rename = slow_rename
mesh = partitioning.create_mesh(2, 2, 2)
trainer = Trainer(ToyModel(dropout_rate=0.1), optim.adafactor(1e-2), mesh, SHAPES)
ckpt = checkpoints.Checkpointer(model_dir, keep=2)
watcher = checkpoints.PreemptionWatcher()
state, data = _initial_state(trainer, ckpt, None, print)
seen = int(data.get("batches", 0))

def batches():
  i = seen
  while True:
    yield toy_batches(1, seed=i)[0]
    i += 1

say = lambda s: print(s, flush=True)
say(f"START {int(state.step)}")
logger = MetricsLogger(None, total_steps=end_step, flops_per_step=0, tokens_per_step=1, print_fn=say)
state, _, _, preempted = run_loop(
    trainer, state, batches(), ckpt=ckpt, watcher=watcher, logger=logger, first_step=0,
    end_step=end_step, batches_seen=seen, log_period=1, checkpoint_period=2, eval_period=0,
    print_fn=say)
ckpt.close()
if not preempted:
  np.savez(os.path.join(model_dir, "final.npz"), **{k: np.asarray(v) for k, v in state.params.items()})
say("DONE")
'''


def _start(tmp_path: Path, model_dir: Path, **env) -> subprocess.Popen:
  script = tmp_path / "harness.py"
  script.write_text(HARNESS)
  return subprocess.Popen(
      [sys.executable, str(script), str(model_dir), str(END_STEP)], stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, env={**os.environ, "TESTS_DIR": str(TESTS_DIR), **env})


def _run_until(proc: subprocess.Popen, predicate, timeout: float = 120) -> list[str]:
  lines, deadline = [], time.time() + timeout
  for line in proc.stdout:
    lines.append(line.rstrip())
    if predicate(line) or time.time() > deadline:
      return lines
  return lines


def _finish(proc: subprocess.Popen) -> str:
  out, _ = proc.communicate(timeout=180)
  assert proc.returncode == 0, out[-3000:]
  return out


def _final_params(model_dir: Path) -> dict[str, np.ndarray]:
  with np.load(model_dir / "final.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("reference")
  _finish(_start(tmp, tmp / "run"))
  return _final_params(tmp / "run")


def test_sigkill_at_random_points_and_during_a_save_resumes_bit_for_bit(tmp_path, reference):
  model_dir = tmp_path / "run"
  # 1) killed while step 6's checkpoint is written but not yet committed (renamed).
  proc = _start(tmp_path, model_dir, SLOW_FINALIZE_STEP="6")
  _run_until(proc, lambda l: l.startswith("FINALIZING 6"))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  leftovers = [p.name for p in (model_dir / "checkpoints").iterdir() if not p.name.isdigit()]
  assert leftovers, "the interrupted save should have left a temporary directory"
  assert checkpoints.Checkpointer(model_dir).latest_step() == 4  # step 6 never became latest
  # 2) killed at random moments after random steps.
  rng = random.Random(0)
  starts = []
  for _ in range(3):
    proc = _start(tmp_path, model_dir)
    starts.append(int(_run_until(proc, lambda l: l.startswith("START"))[-1].split()[1]))
    steps_to_wait = rng.randint(2, 5)
    _run_until(proc, lambda l, left=[steps_to_wait]: l.startswith("step ") and
               left.__setitem__(0, left[0] - 1) is None and left[0] == 0)
    time.sleep(rng.random() * 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  out = _finish(_start(tmp_path, model_dir))
  assert "DONE" in out
  assert starts[0] == 4 and any(s > 4 for s in starts[1:]), starts
  assert not [p for p in (model_dir / "checkpoints").iterdir() if not p.name.isdigit()]
  final = _final_params(model_dir)
  for name, value in reference.items():
    assert np.array_equal(final[name], value), name


def test_sigterm_saves_at_the_current_step(tmp_path):
  model_dir = tmp_path / "run"
  proc = _start(tmp_path, model_dir)
  _run_until(proc, lambda l: l.startswith("step 4/"))
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc)
  line = next(l for l in out.splitlines() if l.startswith("preempted"))
  step = int(line.split("step ")[1].split(";")[0])
  assert step >= 4
  assert checkpoints.Checkpointer(model_dir).latest_step() == step
  assert "DONE" in out and not (model_dir / "final.npz").exists()


class _NanAt5:
  """Wraps the toy model: the loss is NaN for batches whose first token is 0."""

  def __init__(self, model):
    self.model = model

  def get_initial_variables(self, *args, **kwargs):
    return self.model.get_initial_variables(*args, **kwargs)

  def loss_fn(self, params, batch, rng):
    loss, metrics = self.model.loss_fn(params, batch, rng)
    bad = batch["decoder_input_tokens"][0, 0] == 0
    loss = jax.numpy.where(bad, jax.numpy.nan, loss)
    return loss, {**metrics, "loss": loss}


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path):
  sys.path.insert(0, str(TESTS_DIR))
  from test_trainer import SHAPES, ToyModel, toy_batches  # pylint: disable=import-outside-toplevel
  trainer = Trainer(_NanAt5(ToyModel()), optim.adafactor(1e-2), partitioning.create_mesh(), SHAPES)
  batches = toy_batches(8)
  batches[4]["decoder_input_tokens"][0, 0] = 0  # step 5 produces NaN
  ckpt = checkpoints.Checkpointer(tmp_path, keep=3, async_save=False)
  logger = MetricsLogger(None, total_steps=8, flops_per_step=0, tokens_per_step=1, print_fn=lambda _: None)
  state, _ = _initial_state(trainer, ckpt, None, lambda _: None)
  with pytest.raises(NonFiniteLossError, match="step 5.*last good checkpoint \\(step 4\\)"):
    run_loop(trainer, state, iter(batches), ckpt=ckpt, watcher=checkpoints.PreemptionWatcher(),
             logger=logger, first_step=0, end_step=8, batches_seen=0, log_period=1,
             checkpoint_period=2, eval_period=0)
  assert ckpt.latest_step() == 4
  restored, data = ckpt.restore(trainer.abstract_state)
  assert data["batches"] == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
  ckpt.close()
