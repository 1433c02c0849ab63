"""Training checkpoints in MODEL_DIR/checkpoints: async Orbax saves, restore onto any mesh, preemption.

One step directory holds the items `params` (the same item inference and conversion use),
`opt_state` and `data_iter` (JSON: how many batches the input pipeline has produced, so a resumed
run skips exactly those and sees the same next batch). Orbax writes a step into a temporary
directory and renames it when every item is written, so a save interrupted by a crash or SIGKILL
never becomes the latest step; the leftover temporary directory is removed on the next start.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from flan_jax import model_dir as model_dir_lib
from flan_jax.trainer import TrainState


class Checkpointer:
  """Saves and restores TrainState + data-iterator state through the model-dir manager."""

  def __init__(self, model_dir: str | Path, *, keep: int | None = 3, async_save: bool = True):
    self.manager = model_dir_lib.checkpoint_manager(
        model_dir, max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, data_state: dict[str, Any]) -> int:
    """Starts saving `state` at its step (returns at once when async); returns the step."""
    step = int(state.step)
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        data_iter=ocp.args.JsonSave(dict(data_state))), force=True)
    return step

  def restore(self, abstract_state: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores onto the shardings in `abstract_state` (a TrainState of ShapeDtypeStructs).

    The mesh may differ from the one the checkpoint was written with: Orbax reads every array
    straight into its target sharding.
    """
    step = self.manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint to restore under {self.manager.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params),
        opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
        data_iter=ocp.args.JsonRestore()))
    step_array = jax.device_put(jax.numpy.asarray(step, jax.numpy.int32),
                                abstract_state.step.sharding)
    state = TrainState(step=step_array, params=restored["params"], opt_state=restored["opt_state"])
    return state, dict(restored["data_iter"] or {})

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionWatcher:
  """Turns SIGTERM (a preemption notice on Cloud TPU VMs) into "save now and exit".

  One process: a signal handler sets a flag. Several processes: jax's preemption sync point,
  so every host stops at the same step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint at the current step, then exiting")
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step) or self._flag.is_set()
      except RuntimeError:  # the preemption service is not running (e.g. local multi-process)
        return self._flag.is_set()
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
