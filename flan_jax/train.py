r"""Finetune a model on a SeqIO mixture or task (gin-configured, T5X style).

  python -m flan_jax.train --gin_file=runs/demo.gin
  python -m flan_jax.train --gin_file=runs/finetune.gin --gin_file=models/flan_t5_small.gin \
      --gin.MODEL_DIR="'/tmp/ft'" --gin.MIXTURE_OR_TASK_NAME="'flan2022'" \
      --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/t5_small'"

Rerunning the same command resumes from the latest checkpoint in MODEL_DIR: parameters,
optimizer state and the position of the input pipeline, so the run continues with the batch it
would have seen. TRAIN_STEPS counts steps after the starting point (step 0, or the step of the
INITIAL_CHECKPOINT_PATH checkpoint); a resumed run ends at the same step as an uninterrupted one.
SIGTERM (TPU preemption) saves at the current step and exits cleanly.
"""
from __future__ import annotations

if __name__ == "__main__":
  # `python -m flan_jax.train` runs the importable module's main: gin must see one `train`
  # (flan_jax.train.train, which flan_jax.configurables imports), not a second copy in __main__.
  from flan_jax import gin_utils as _gin_utils, train as _train_module
  _gin_utils.run(_train_module.main)

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from flan_jax import checkpoints, gin_utils, metrics, model_dir as model_dir_lib, partitioning
from flan_jax.optim import Optimizer, adafactor
from flan_jax.trainer import Trainer, TrainState, check_finite, finalize_eval, estimate_flops_per_example


def _registry():
  from flan_jax.data import registry  # pylint: disable=import-outside-toplevel
  registry.ensure_registered()
  return registry


def _host_batches(dataset, per_host_batch: int, skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
  dataset = dataset.batch(per_host_batch, drop_remainder=True)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  for batch in dataset.prefetch(2).as_numpy_iterator():
    yield batch


@gin.configurable
def build_model(config: Any = gin.REQUIRED, vocabulary: str = "t5",
                dropout_rate: float | None = None) -> Any:
  """The model wrapper for `config` (a T5Config / DecoderConfig, e.g. bound by gin/models/*.gin).

  Args:
    config: network configuration.
    vocabulary: 'demo' (the demo SentencePiece model; the embedding is resized to it), 't5' (the
      T5 / Flan-T5 one) or a path to a SentencePiece model.
    dropout_rate: overrides config.dropout_rate (run gins bind it to DROPOUT_RATE).
  """
  from flan_jax import models  # pylint: disable=import-outside-toplevel
  from flan_jax.data import vocab  # pylint: disable=import-outside-toplevel
  if dropout_rate is not None:
    config = dataclasses.replace(config, dropout_rate=dropout_rate)
  if vocabulary == "demo":
    vocab_obj = vocab.demo_vocabulary()
    # The demo vocabulary is tiny: size the embedding to it (padded to a multiple of 128).
    config = dataclasses.replace(config, vocab_size=-(-vocab_obj.vocab_size // 128) * 128)
  elif vocabulary == "t5":
    vocab_obj = vocab.t5_vocabulary()
  else:
    vocab_obj = vocab.t5_vocabulary(vocabulary)
  if config.vocab_size < vocab_obj.vocab_size:
    raise ValueError(f"the model's vocab_size {config.vocab_size} is smaller than the vocabulary "
                     f"'{vocabulary}' ({vocab_obj.vocab_size} ids); pick a matching model gin or "
                     f"vocabulary")
  return models.build_model_from_config(config, vocab_obj)


def _model_family(model: Any) -> str:
  from flan_jax.models import configs  # pylint: disable=import-outside-toplevel
  return "t5" if isinstance(model.config, configs.T5Config) else "decoder"


class _InferenceEval:
  """Inference evaluation through seqio.Evaluator, with the model's predict_batch on the mesh."""

  def __init__(self, name: str, model: Any, trainer: Trainer, feature_lengths: Mapping[str, int],
               batch_size: int, num_examples: int | None, split: str):
    import seqio  # pylint: disable=import-outside-toplevel
    self.model, self.trainer, self.batch_size = model, trainer, batch_size
    self.evaluator = seqio.Evaluator(
        name, feature_converter=model.feature_converter_cls(pack=False), eval_split=split,
        sequence_length=dict(feature_lengths), num_examples=num_examples, use_cached=False,
        logger_cls=(), async_compute_metrics=False)
    self.max_decode_length = feature_lengths.get("targets")

  def _run(self, dataset, fn: Callable[[Any, dict[str, Any]], Any]) -> list[tuple[int, Any]]:
    divisor = partitioning.batch_divisor(self.trainer.mesh, self.trainer.rules)
    rows = max(divisor, self.batch_size - self.batch_size % divisor)
    per_host = rows // jax.process_count()
    start = jax.process_index() * per_host
    results = []
    for indices, features in dataset.batch(rows).as_numpy_iterator():
      n = len(indices)
      padded = {k: np.concatenate([v, np.repeat(v[-1:], rows - n, 0)]) if n < rows else v
                for k, v in features.items()}
      host = {k: v[start:start + per_host] for k, v in padded.items()}
      global_batch = partitioning.host_to_global(host, self.trainer.mesh, self.trainer.rules)
      out = np.asarray(multihost_utils.process_allgather(fn(self.params, global_batch), tiled=True))
      results.extend(zip(indices.tolist(), list(out[:n])))
    return results

  def _predict(self, dataset):
    return self._run(dataset, lambda p, b: self.model.predict_batch(
        p, b, max_decode_length=self.max_decode_length))

  def _score(self, dataset):
    return self._run(dataset, self.model.score_batch)

  def __call__(self, params: Any, step: int) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Returns ({task: {metric: value}}, {task: [(input, target, prediction), ...]})."""
    self.params = params
    future, outputs = self.evaluator.evaluate(
        compute_metrics=True, step=step, predict_fn=self._predict, score_fn=self._score)
    results = {t: {k: float(v) if np.ndim(v) == 0 else v for k, v in m.items()}
               for t, m in future.result().items()}
    samples = {}
    for task_name, task_outputs in outputs.items():
      predictions = next(iter(task_outputs.values()), [])
      examples = self.evaluator.cached_task_datasets[task_name].take(len(predictions)).as_numpy_iterator()
      vocab = self.model.vocabulary
      samples[task_name] = [
          (_text(ex.get("inputs_pretokenized", "")), _text(ex.get("targets_pretokenized", "")),
           vocab.decode([int(t) for t in pred]) if np.ndim(pred) else str(pred))
          for ex, pred in zip(examples, predictions)]
    self.params = None
    return results, samples


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _teacher_forced_eval(trainer: Trainer, params: Any, dataset, per_host_batch: int,
                         num_batches: int) -> dict[str, float]:
  sums = [trainer.eval_step(params, trainer.global_batch(b))
          for b, _ in zip(_host_batches(dataset, per_host_batch), range(num_batches))]
  return finalize_eval(jax.device_get(sums))


def _headline(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
  """{task/metric: value} for scalar metrics."""
  return {f"{task}/{name}": float(v) for task, m in results.items() for name, v in m.items()
          if np.ndim(v) == 0}


def _print_summary(start: dict[str, float] | None, end: dict[str, float],
                   samples: Mapping[str, list], num_samples: int, print_fn) -> None:
  width = max((len(k) for k in end), default=10)
  print_fn(f"\n{'metric':<{width}}  {'start':>8}  {'end':>8}")
  for key, value in end.items():
    before = f"{start[key]:8.2f}" if start and key in start else f"{'-':>8}"
    print_fn(f"{key:<{width}}  {before}  {value:8.2f}")
  if num_samples:
    print_fn("\nsamples (prompt → generation | target):")
    flat = [s for task_samples in samples.values() for s in task_samples[:max(1, num_samples // max(len(samples), 1))]]
    for prompt, target, generated in flat[:num_samples]:
      prompt = " ".join(prompt.split())
      prompt = prompt if len(prompt) <= 110 else "…" + prompt[-109:]
      print_fn(f"  {prompt}\n    → {generated!r} | {target!r}")


def cpu_allocator_note() -> str | None:
  """A one-line hint on CPU hosts that start Python without glibc's huge pages for malloc.

  XLA:CPU allocates each step's temporaries afresh (GBs for a T5 step); in 4 KiB pages the kernel
  faults and zeroes every page on every step (Flan-T5-small bench step: 4.20 s, 3.52 s with 2 MB
  pages). glibc reads the tunable when the process starts, so it can only be set from outside.
  """
  if jax.default_backend() != "cpu" or "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
    return None
  return ("note: on CPU, steps run faster with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 set before "
          "Python starts (the make targets set it; README 'Training')")


@gin.configurable(denylist=["print_fn"])
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, model: Any = gin.REQUIRED,
          optimizer: Optimizer | None = None, initial_checkpoint_path: str | None = None,
          pack: bool = True, shuffle: bool = True, seed: int = 0, use_cached: bool = False,
          cache_dirs: Sequence[str] = (),
          num_microbatches: int = 1, loss_normalization: str | None = None,
          log_period: int = 100, checkpoint_period: int = 1000, keep_checkpoints: int | None = 3,
          async_checkpointing: bool = True, eval_period: int = 1000, eval_batches: int = 10,
          infer_eval: bool = True, infer_eval_examples: int | None = None,
          infer_eval_at_start: bool = False, eval_split: str = "validation",
          num_samples_to_print: int = 0,
          print_fn: Callable[[str], None] = print) -> dict[str, float]:
  """Trains until step `first_step + train_steps`; returns the final eval metrics.

  Args:
    model_dir: output folder (checkpoints, TensorBoard events, config.gin, model_spec.json).
    mixture_or_task_name: registered SeqIO mixture or task.
    task_feature_lengths: {"inputs": N, "targets": M}.
    train_steps: steps to train after the starting point (0, or the warm-start checkpoint's step).
    batch_size: global batch size (all hosts together).
    model: a model wrapper (flan_jax.models), typically bound by a gin file in gin/models/.
    optimizer: optim.Optimizer; default Adafactor at 5e-4 constant (Flan-T5's Table 22).
    initial_checkpoint_path: model dir (or a converted checkpoint) whose params start the run.
    use_cached: read the tasks from SeqIO's offline cache (`python -m flan_jax.data.cache NAME
      --output_dir=DIR`) instead of running their preprocessing; inference eval stays live.
    cache_dirs: folders searched for that cache (added to SeqIO's global cache dirs).
    eval_period / checkpoint_period / log_period: in steps; the last step always evals and saves.
    eval_batches: batches of the `eval_split` for the teacher-forced loss (0: off).
    infer_eval: run seqio.Evaluator with predict_batch at each eval (metrics of the tasks).
    infer_eval_examples: cap on examples per task for inference eval (None: all).
    infer_eval_at_start: also evaluate before the first step (start-vs-end table).
    num_samples_to_print: prompt → generation samples printed after the final eval.
  """
  partitioning.initialize_distributed()
  if jax.process_index() == 0 and (note := cpu_allocator_note()):
    print_fn(note)
  registry = _registry()
  import seqio  # pylint: disable=import-outside-toplevel
  task = registry.get_mixture_or_task(mixture_or_task_name)
  if use_cached:
    from flan_jax.data import cache  # pylint: disable=import-outside-toplevel
    for cache_dir in cache_dirs:
      cache.use_cache_dir(cache_dir)
    cache.require_cached(mixture_or_task_name,
                         ["train"] + ([eval_split] if eval_batches else []))
  optimizer = optimizer or adafactor()
  if batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE {batch_size} must be a multiple of the {jax.process_count()} hosts")
  per_host = batch_size // jax.process_count()
  lengths = dict(task_feature_lengths)
  converter = model.feature_converter_cls(pack=pack)
  shard = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())

  def dataset(split: str, train_split: bool):
    ds = task.get_dataset(lengths, split=split, use_cached=use_cached, shard_info=shard,
                          shuffle=shuffle and train_split, num_epochs=None if train_split else 1,
                          seed=seed)
    return converter(ds, lengths)

  train_ds = dataset("train", True)
  shapes = {k: (batch_size,) + tuple(s.shape) for k, s in train_ds.element_spec.items()}
  types = {k: s.dtype.as_numpy_dtype for k, s in train_ds.element_spec.items()}
  mesh = partitioning.create_mesh()
  trainer = Trainer(model, optimizer, mesh, shapes, types, num_microbatches=num_microbatches,
                    loss_normalization=loss_normalization, seed=seed)
  model_dir = model_dir_lib.as_path(model_dir)
  if jax.process_index() == 0:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.gin").write_text(gin.config_str())
    model_dir_lib.write_spec(model_dir, _model_family(model), model.config,
                             model.vocabulary.sentencepiece_model_file,
                             extra_ids=getattr(model.vocabulary, "extra_ids", 100))
    partitioning.write_dump(model_dir, trainer.boxed_params, trainer.param_shardings, mesh)

  ckpt = checkpoints.Checkpointer(model_dir, keep=keep_checkpoints, async_save=async_checkpointing)
  watcher = checkpoints.PreemptionWatcher()
  try:
    state, data_state = _initial_state(trainer, ckpt, initial_checkpoint_path, print_fn)
    first_step = int(data_state.get("first_step", 0))
    end_step = first_step + train_steps
    batches_seen = int(data_state.get("batches", 0))
    tokens_per_step = batch_size * sum(lengths.values())
    logger = metrics.MetricsLogger(
        model_dir / "train", total_steps=end_step, tokens_per_step=tokens_per_step,
        flops_per_step=batch_size * estimate_flops_per_example(trainer.abstract_params, lengths),
        print_fn=print_fn)
    eval_logger = metrics.MetricsLogger(model_dir / "eval", total_steps=end_step, tokens_per_step=0,
                                        flops_per_step=0, print_fn=print_fn)
    inference = (_InferenceEval(mixture_or_task_name, model, trainer, lengths, batch_size,
                                infer_eval_examples, eval_split) if infer_eval else None)

    def evaluate(step: int, params: Any) -> tuple[dict[str, float], dict[str, list]]:
      results, samples = {}, {}
      if eval_batches:
        tf_metrics = _teacher_forced_eval(trainer, params, dataset(eval_split, False),
                                          per_host, eval_batches)
        results.update({f"teacher_forced/{k}": v for k, v in tf_metrics.items() if k != "num_tokens"})
      if inference is not None:
        task_metrics, samples = inference(params, step)
        results.update(_headline(task_metrics))
      eval_logger.log_eval(step, results)
      print_fn(f"eval @ step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
      return results, samples

    start_metrics = None
    if infer_eval_at_start and int(state.step) == first_step:
      start_metrics, _ = evaluate(first_step, state.params)

    state, final_metrics, samples, preempted = run_loop(
        trainer, state, _host_batches(train_ds, per_host, batches_seen), ckpt=ckpt, watcher=watcher,
        logger=logger, first_step=first_step, end_step=end_step, batches_seen=batches_seen,
        log_period=log_period, checkpoint_period=checkpoint_period, eval_period=eval_period,
        evaluate=evaluate, print_fn=print_fn)
    if preempted:
      return {}
    _print_summary(start_metrics, final_metrics, samples, num_samples_to_print, print_fn)
    logger.close()
    eval_logger.close()
    print_fn(json.dumps({"step": int(state.step), **{k: round(v, 4) for k, v in final_metrics.items()}}))
    return final_metrics
  finally:
    watcher.close()
    ckpt.close()


def run_loop(trainer: Trainer, state: TrainState, batches: Iterator[Mapping[str, np.ndarray]], *,
             ckpt: checkpoints.Checkpointer, watcher: checkpoints.PreemptionWatcher,
             logger: metrics.MetricsLogger, first_step: int, end_step: int, batches_seen: int,
             log_period: int, checkpoint_period: int, eval_period: int,
             evaluate: Callable[[int, Any], tuple[dict[str, float], dict[str, list]]] | None = None,
             print_fn: Callable[[str], None] = print
             ) -> tuple[TrainState, dict[str, float], dict[str, list], bool]:
  """Steps until `end_step`, logging, checkpointing and evaluating; returns (state, final eval, samples, preempted).

  Metrics stay on device until a log or a save needs them, so the host never waits on a step it
  does not have to; every fetched loss is checked before the state that produced it is saved.
  """
  step = int(state.step)
  pending: list[Any] = []
  final_metrics: dict[str, float] | None = None
  samples: dict[str, list] = {}

  def flush() -> None:
    if pending:
      fetched = jax.device_get(pending)
      for offset, m in enumerate(fetched):
        check_finite(m, step - len(fetched) + offset + 1, ckpt.latest_step())
      logger.log_train(step, fetched)
      pending.clear()

  def save() -> None:
    flush()
    ckpt.save(state, {"batches": batches_seen, "first_step": first_step})

  while step < end_step:
    host_batch = next(batches)
    batches_seen += 1
    state, step_metrics = trainer.train_step(state, trainer.global_batch(host_batch))
    step += 1
    pending.append(step_metrics)
    if len(pending) == 1 and logger.timing_from is None:
      jax.block_until_ready(state.step)  # once: keep compilation out of tokens/s
      logger.start(step)
    if watcher.should_stop(step):
      save()
      ckpt.wait()
      print_fn(f"preempted: saved a checkpoint at step {step}; rerun the same command to resume")
      return state, {}, {}, True
    if step % log_period == 0:
      flush()
    if step % checkpoint_period == 0 or step == end_step:
      save()
    if evaluate is not None and (step == end_step or (eval_period and step % eval_period == 0)):
      final_metrics, samples = evaluate(step, state.params)
      logger.start(step)
  flush()
  if evaluate is not None and final_metrics is None:
    final_metrics, samples = evaluate(step, state.params)
  ckpt.wait()
  return state, final_metrics or {}, samples, False


def _initial_state(trainer: Trainer, ckpt: checkpoints.Checkpointer, initial_checkpoint_path: str | None,
                   print_fn) -> tuple[TrainState, dict[str, Any]]:
  """Resume from MODEL_DIR, else warm-start params from another model dir, else initialize."""
  latest = ckpt.latest_step()
  if latest is not None:
    state, data_state = ckpt.restore(trainer.abstract_state, latest)
    print_fn(f"resumed from step {latest} in {ckpt.manager.directory}")
    return state, data_state
  if initial_checkpoint_path:
    step = model_dir_lib.latest_step(initial_checkpoint_path)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          trainer.abstract_params, trainer.param_shardings)
    try:
      params = model_dir_lib.restore_params(initial_checkpoint_path, target=target)
    except (ValueError, KeyError) as e:
      raise ValueError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} does not fit the model "
                       f"configured here ({str(e).splitlines()[0]}); use a checkpoint of the same "
                       f"architecture or change the model gin") from e
    print_fn(f"warm start from {initial_checkpoint_path} (step {step})")
    return trainer.state_from_params(params, step=step or 0), {"first_step": step or 0}
  return trainer.init_state(), {}


def main() -> None:
  if not flags.FLAGS["verbosity"].present:  # Orbax and seqio log every step at INFO
    logging.set_verbosity(logging.WARNING)
  start = time.time()
  try:
    train()
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    from flan_jax.data.cache import CacheMissingError  # pylint: disable=import-outside-toplevel
    from flan_jax.trainer import NonFiniteLossError  # pylint: disable=import-outside-toplevel
    if (isinstance(e, (NonFiniteLossError, CacheMissingError))
        or "INITIAL_CHECKPOINT_PATH" in str(e)):
      raise SystemExit(f"error: {e}") from None
    raise
  logging.info("training finished in %.0f s", time.time() - start)

