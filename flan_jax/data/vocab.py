"""Vocabularies: the released T5 SentencePiece model, and a small one trained on the demo data.

Both are `seqio.SentencePieceVocabulary` objects with 100 extra ids (pad 0, eos 1, unk 2).

The demo vocabulary is trained at first use on rendered demo examples and cached under
`$FLAN_JAX_CACHE_DIR/demo_vocab/` (default `~/.cache/flan_jax`). The file name carries a hash of
the training corpus and settings, so a change to the demo data or templates retrains it. Training
is deterministic (one thread, fixed corpus) and the model is written to a temporary file and renamed
into place, so concurrent processes that race on a cold cache all end up reading one whole file.
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import seqio

T5_VOCAB_ENV = "FLAN_JAX_T5_VOCAB"
CACHE_DIR_ENV = "FLAN_JAX_CACHE_DIR"
EXTRA_IDS = 100
_T5_RELATIVE = Path("shared", "data", "t5_vocab", "t5_spiece.model")

DEMO_VOCAB_SIZE = 1000
DEMO_EXAMPLES_PER_FAMILY = 1500
_DEMO_TRAINER_ARGS = dict(
    model_type="bpe", vocab_size=DEMO_VOCAB_SIZE, character_coverage=1.0, split_digits=True,
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, shuffle_input_sentence=False,
    input_sentence_size=0, max_sentence_length=8192, minloglevel=2,
)


def cache_dir() -> Path:
  """The flan_jax cache folder: `$FLAN_JAX_CACHE_DIR`, else ~/.cache/flan_jax."""
  return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "flan_jax")


def _default_t5_paths() -> list[Path]:
  repo_parent = Path(__file__).resolve().parents[3]  # <parent>/<repo>/flan_jax/data/vocab.py
  return [repo_parent / _T5_RELATIVE, Path.cwd().parent / _T5_RELATIVE]


def t5_vocabulary(path: Optional[Union[str, os.PathLike]] = None) -> seqio.SentencePieceVocabulary:
  """The T5 / Flan-T5 SentencePiece vocabulary (32,000 pieces + 100 extra ids).

  Args:
    path: the `spiece.model` file (local or gs://). Default: `$FLAN_JAX_T5_VOCAB`, else
      ../shared/data/t5_vocab/t5_spiece.model beside the repository when present.
  """
  if path is None:
    path = os.environ.get(T5_VOCAB_ENV)
  if path is None:
    found = [p for p in _default_t5_paths() if p.exists()]
    if not found:
      raise FileNotFoundError(
          "No T5 SentencePiece model found: set $FLAN_JAX_T5_VOCAB (or pass path=) to a "
          "spiece.model, e.g. gs://t5-data/vocabs/cc_all.32000/sentencepiece.model.")
    path = found[0]
  path = str(path)
  if "://" not in path and not Path(path).exists():
    raise FileNotFoundError(f"T5 SentencePiece model '{path}' does not exist: fix the path or "
                            f"${T5_VOCAB_ENV}.")
  return seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)


def demo_corpus() -> list[str]:
  """Training text for the demo vocabulary: rendered demo train examples, all template types."""
  from flan_jax.data import demo_generators, formatting  # pylint: disable=g-import-not-at-top
  lines = []
  for demo in demo_generators.FAMILIES.values():
    pool = list(itertools.islice(demo_generators.generate(demo, "train", seed=1), 200))
    formatter = formatting.Formatter(demo.family, demo.template_types,
                                     task_name=f"demo_{demo.name}", exemplars=pool)
    examples = itertools.islice(demo_generators.generate(demo, "train"), DEMO_EXAMPLES_PER_FAMILY)
    for rendered in formatter.format_stream(examples):
      lines.append(rendered["inputs"].replace("\n", " "))
      lines.append(rendered["targets"].replace("\n", " "))
  return lines


def _train_sentencepiece(lines: list[str]) -> bytes:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                 **_DEMO_TRAINER_ARGS)
  return model.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def demo_vocabulary_path() -> Path:
  """Path of the cached demo SentencePiece model, training it first if it is not cached yet."""
  lines = demo_corpus()
  digest = hashlib.sha256(repr(sorted(_DEMO_TRAINER_ARGS.items())).encode())
  for line in lines:
    digest.update(line.encode("utf-8") + b"\n")
  path = cache_dir() / "demo_vocab" / f"spiece-{digest.hexdigest()[:16]}.model"
  if not path.exists():
    atomic_write(path, _train_sentencepiece(lines))
  return path


@functools.lru_cache(maxsize=None)
def demo_vocabulary() -> seqio.SentencePieceVocabulary:
  """A 1,000-piece SentencePiece vocabulary (+100 extra ids) for the demo mixture, cached on disk."""
  return seqio.SentencePieceVocabulary(str(demo_vocabulary_path()), extra_ids=EXTRA_IDS)

