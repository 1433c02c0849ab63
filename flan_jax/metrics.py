"""Training metrics on the host: TensorBoard summaries, a progress line with ETA, tokens/s and MFU.

Only process 0 writes summaries and prints. MFU divides an analytic FLOP estimate of the step
(trainer.estimate_flops_per_example) by the wall time and the devices' peak FLOP/s: it is an
estimate, labelled as such.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax

# Dense bf16 peak FLOP/s per jax device (per TensorCore on megacore TPUs), published figures.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v2": 22.5e12, "TPU v3": 61.5e12, "TPU v4": 137.5e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v5": 229.5e12, "TPU v5p": 229.5e12, "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


@gin.configurable(module="metrics")
def peak_flops_per_device(value: float | None = None) -> float | None:
  """Peak FLOP/s of one device for MFU; `value` overrides the table (None: unknown, no MFU)."""
  if value is not None:
    return value
  kind = jax.devices()[0].device_kind
  for name, flops in sorted(PEAK_FLOPS_BY_DEVICE_KIND.items(), key=lambda kv: -len(kv[0])):
    if kind.startswith(name):
      return flops
  return None


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricsLogger:
  """Aggregates fetched per-step metrics, writes TensorBoard events and prints progress."""

  def __init__(self, log_dir: str | Path | None, *, total_steps: int, flops_per_step: float,
               tokens_per_step: int, print_fn: Callable[[str], None] = print):
    """`log_dir` None: no TensorBoard events (tests); otherwise only process 0 writes them."""
    self.is_chief = jax.process_index() == 0
    self.writer = None
    if log_dir is not None:
      from clu import metric_writers  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
      self.writer = metric_writers.create_default_writer(
          str(log_dir), just_logging=not self.is_chief, asynchronous=False)
    self.total_steps = total_steps
    self.flops_per_step = flops_per_step
    self.tokens_per_step = tokens_per_step
    self.peak = peak_flops_per_device()
    self.print_fn = print_fn if self.is_chief else (lambda _: None)
    self.timing_from: float | None = None
    self._timing_step: int | None = None

  def start(self, step: int) -> None:
    """(Re)starts timing, e.g. after an eval, so tokens/s counts training time only."""
    self.timing_from, self._timing_step = time.perf_counter(), step

  def log_train(self, step: int, fetched: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """`fetched`: host copies of the metrics of every step since the last call; `step`: the latest."""
    if not fetched:
      return {}
    summary = {k: sum(float(m[k]) for m in fetched) / len(fetched) for k in fetched[0]}
    summary["learning_rate"] = float(fetched[-1]["learning_rate"])
    now = time.perf_counter()
    if self.timing_from is not None and step > self._timing_step:
      seconds_per_step = (now - self.timing_from) / (step - self._timing_step)
      summary["steps_per_second"] = 1.0 / seconds_per_step
      summary["tokens_per_second"] = self.tokens_per_step / seconds_per_step
      if self.peak:
        summary["mfu_estimate"] = self.flops_per_step / seconds_per_step / (self.peak * jax.device_count())
      eta = _format_seconds((self.total_steps - step) * seconds_per_step)
    else:
      eta = "?"
    self.timing_from, self._timing_step = now, step
    self._write(step, {f"train/{k}": v for k, v in summary.items()})
    parts = [f"step {step}/{self.total_steps}", f"loss {summary['loss']:.4f}"]
    if "accuracy" in summary:
      parts.append(f"acc {summary['accuracy']:.3f}")
    parts.append(f"lr {summary['learning_rate']:.2e}")
    if "tokens_per_second" in summary:
      parts.append(f"{summary['tokens_per_second']:,.0f} tok/s")
    if "mfu_estimate" in summary:
      parts.append(f"MFU≈{100 * summary['mfu_estimate']:.1f}%")
    parts.append(f"ETA {eta}")
    self.print_fn("  ".join(parts))
    return summary

  def log_eval(self, step: int, metrics: Mapping[str, float], prefix: str = "eval") -> None:
    scalars = {f"{prefix}/{k}": float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and math.isfinite(float(v))}
    self._write(step, scalars)

  def _write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self.writer is not None:
      self.writer.write_scalars(step, scalars)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
