"""A small Python API for notebooks: load a checkpoint, then generate or score text.

    import flan_jax
    model = flan_jax.load("/path/to/model_dir")
    model.generate(["Translate to German: Thank you."], decode="beam", beam_size=4)
    model.score(["Is the sky blue? OPTIONS: - yes - no"], ["yes"])

`load` takes a flan_jax model directory (a training run or a converted checkpoint). Other layouts
(T5X, Hugging Face) are handled by `flan_jax.convert.auto.load_any(path) -> (ModelSpec, params)`
(the spec's vocabulary an absolute path) when that module exists; `load` calls it for any path
that is not a flan_jax model directory.

Prompts are batched (`batch_size` rows, the last batch padded by repeating its last row), each
batch sharded over a data-parallel mesh of all devices; the compiled step is reused for every
batch of the same shape (input lengths are rounded up to a multiple of `LENGTH_BUCKET`).
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flan_jax import model_dir as model_dir_lib
from flan_jax import partitioning

LENGTH_BUCKET = 32
AUTO_LOADER = "flan_jax.convert.auto"


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, math.ceil(n / multiple) * multiple)


class LoadedModel:
  """A model wrapper with its parameters placed on a data-parallel mesh."""

  def __init__(self, model: Any, params: Any, *, batch_size: int = 8, mesh: Any = None):
    self.model = model
    self.vocabulary = model.vocabulary
    self.mesh = partitioning.create_mesh(data=-1) if mesh is None else mesh
    self.batch_size = batch_size
    self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))

  def _rows(self, batch_size: int | None) -> int:
    divisor = partitioning.batch_divisor(self.mesh)
    return _round_up(batch_size or self.batch_size, divisor)

  def _encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [list(self.vocabulary.encode(t)) + [self.vocabulary.eos_id] for t in texts]

  def _batches(self, inputs: list[list[int]], targets: list[list[int]] | None, rows: int,
               input_length: int, target_length: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(number of real rows, global sharded batch) per chunk of `rows` examples."""
    for start in range(0, len(inputs), rows):
      chunk_in = inputs[start:start + rows]
      chunk_tg = None if targets is None else targets[start:start + rows]
      n = len(chunk_in)
      chunk_in = chunk_in + [chunk_in[-1]] * (rows - n)
      if chunk_tg is not None:
        chunk_tg = chunk_tg + [chunk_tg[-1]] * (rows - n)
      batch = self.model.make_batch(chunk_in, chunk_tg, input_length, target_length)
      yield n, partitioning.host_to_global(batch, self.mesh)

  def _input_length(self, inputs: list[list[int]], max_input_length: int | None) -> int:
    longest = max(len(x) for x in inputs)
    return max_input_length or _round_up(longest, LENGTH_BUCKET)

  def generate(self, prompts: Sequence[str] | str, *, decode: str = "greedy",
               max_decode_length: int = 64, num_samples: int = 1, temperature: float = 1.0,
               topk: int = 0, topp: float = 0.0, beam_size: int = 4, alpha: float = 0.6,
               seed: int = 0, batch_size: int | None = None,
               max_input_length: int | None = None) -> list[str] | list[list[str]]:
    """Decodes each prompt; one string per prompt, or a list of `num_samples` strings if > 1.

    decode: 'greedy', 'sample' (temperature / topk / topp; `seed` fixes the draws) or 'beam'
    (`beam_size` beams, length penalty `alpha`; num_samples returns the best num_samples beams).
    Prompts longer than `max_input_length` tokens are truncated (kept in full by default).
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
      return []
    inputs = self._encode(prompts)
    input_length = self._input_length(inputs, max_input_length)
    outputs: list[Any] = []
    rng = jax.random.PRNGKey(seed)
    with jax.set_mesh(self.mesh):
      for i, (n, batch) in enumerate(self._batches(inputs, None, self._rows(batch_size),
                                                    input_length, max_decode_length)):
        tokens = self.model.predict_batch(
            self.params, batch, jax.random.fold_in(rng, i), decode_method=decode,
            num_decodes=num_samples, max_decode_length=max_decode_length, temperature=temperature,
            topk=topk, topp=topp, beam_size=beam_size, alpha=alpha)
        tokens = np.asarray(jax.device_get(tokens))[:n]
        if num_samples == 1:
          outputs.extend(self._detokenize(row) for row in tokens)
        else:
          outputs.extend([self._detokenize(s) for s in row] for row in tokens)
    return outputs[0] if single else outputs

  def score(self, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int | None = None,
            max_input_length: int | None = None, max_target_length: int | None = None) -> list[float]:
    """Summed log-likelihood of each target (EOS included) given its prompt."""
    if len(prompts) != len(targets):
      raise ValueError(f"score needs one target per prompt; got {len(prompts)} prompts and "
                       f"{len(targets)} targets")
    if not prompts:
      return []
    inputs, target_ids = self._encode(list(prompts)), self._encode(list(targets))
    input_length = self._input_length(inputs, max_input_length)
    target_length = max_target_length or _round_up(max(len(t) for t in target_ids), LENGTH_BUCKET)
    scores: list[float] = []
    with jax.set_mesh(self.mesh):
      for n, batch in self._batches(inputs, target_ids, self._rows(batch_size), input_length,
                                    target_length):
        scores.extend(float(s) for s in np.asarray(jax.device_get(
            self.model.score_batch(self.params, batch)))[:n])
    return scores

  def _detokenize(self, ids: np.ndarray) -> str:
    ids = ids.tolist()
    if self.vocabulary.eos_id in ids:
      ids = ids[:ids.index(self.vocabulary.eos_id)]
    return self.vocabulary.decode(ids)


def _auto_loader() -> Callable[[str], tuple[Any, Any]] | None:
  if importlib.util.find_spec(AUTO_LOADER) is None:
    return None
  return importlib.import_module(AUTO_LOADER).load_any


def load(path: str | Path, *, step: int | None = None, batch_size: int = 8) -> LoadedModel:
  """Loads a checkpoint directory for inference (see the module docstring for accepted layouts)."""
  from flan_jax import models  # pylint: disable=import-outside-toplevel
  path = Path(path).expanduser()
  if not (path / model_dir_lib.SPEC_FILE).exists():
    loader = _auto_loader()
    if loader is None:
      model_dir_lib.read_spec(path)  # raises the "not a flan_jax model directory" error
    spec, params = loader(str(path))
    return LoadedModel(models.build_model(spec), params, batch_size=batch_size)
  model = models.build_model(model_dir_lib.read_spec(path), path)
  params = model_dir_lib.restore_params(path, step)
  return LoadedModel(model, params, batch_size=batch_size)
