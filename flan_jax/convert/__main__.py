"""Checkpoint conversion: T5X ↔ flan_jax, Hugging Face ↔ flan_jax.

  python -m flan_jax.convert t5x-to-flax --input T5X_CKPT --output MODEL_DIR [--vocab SPM]
      [--config flan_t5_small | --gin_file models/flan_t5_small.gin] [--with_optimizer_state]
      [--t5x_param_scan_axis 1] [--gin.optim.adafactor.min_dim_size_to_factor=128 ...]
  python -m flan_jax.convert hf-to-flax --input HF_DIR --output MODEL_DIR [--allow_pickle]
  python -m flan_jax.convert flax-to-hf --input MODEL_DIR --output HF_DIR [--step N]
  python -m flan_jax.convert flax-to-t5x --input MODEL_DIR --output T5X_DIR [--step N]
      [--t5x_scan_layers [--t5x_param_scan_axis 1] | --with_optimizer_state]

T5X checkpoints carry no config: it is inferred from the parameter shapes unless --config (a
name from flan_jax.models.configs.CONFIGS) or --gin_file (a model gin, e.g.
models/flan_t5_small.gin) gives it. Neither T5X nor some HF checkpoints carry the SentencePiece model:
--vocab names it (default for T5: the T5 vocabulary, see flan_jax.data.vocab).
--with_optimizer_state also maps T5X's Adafactor statistics and step onto the optax state of
optim.adafactor as gin configures it (pass the optim.adafactor bindings you will train with) and
writes a training checkpoint that `python -m flan_jax.train --gin.MODEL_DIR=MODEL_DIR` resumes.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from flan_jax import gin_utils
from flan_jax.convert import core

COMMANDS = ("t5x-to-flax", "hf-to-flax", "flax-to-hf", "flax-to-t5x")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m flan_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", choices=COMMANDS)
  parser.add_argument("--input", required=True, help="source checkpoint (file or directory)")
  parser.add_argument("--output", required=True, help="destination directory")
  parser.add_argument("--vocab", help="SentencePiece model when the source has none")
  parser.add_argument("--config", help="flan_jax config name for T5X sources (e.g. flan_t5_small)")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="model gin file setting model_config.name (T5X sources)")
  parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin binding")
  parser.add_argument("--gin_search_paths", action="append", default=[])
  parser.add_argument("--allow_pickle", action="store_true",
                      help="allow PyTorch .bin weights (unpickling runs code: trusted files only)")
  parser.add_argument("--step", type=int, help="flax-to-*: checkpoint step (default latest)")
  parser.add_argument("--with_optimizer_state", action="store_true",
                      help="also convert the Adafactor state (t5x-to-flax: a resumable training "
                           "checkpoint; flax-to-t5x: T5X's param_states, unscanned)")
  parser.add_argument("--t5x_min_dim_size_to_factor", type=int, default=128,
                      help="flax-to-t5x: T5X Adafactor's min_dim_size_to_factor")
  parser.add_argument("--t5x_param_scan_axis", type=int, default=1,
                      help="layer axis of scanned T5X params (T5X's param_scan_axis)")
  parser.add_argument("--t5x_scan_layers", action="store_true",
                      help="flax-to-t5x: write T5X's scanned layout (encoder/layers/...)")
  return parser


def _config_from_gin(args: argparse.Namespace) -> Any:
  """The config a model gin selects (`model_config.name = ...`, see flan_jax.models.configs)."""
  from flan_jax.models import configs  # pylint: disable=import-outside-toplevel
  gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
  try:
    return configs.model_config()
  except TypeError as e:
    raise ValueError(f"the gin files {args.gin_file} do not set model_config.name; use a model gin "
                     f"such as models/flan_t5_small.gin, or --config NAME") from e


def _t5x_config(args: argparse.Namespace) -> Any:
  """--config, else the model gin's config, else None (inferred); gin also binds optim.adafactor."""
  if args.gin_file and not args.config:
    return _config_from_gin(args)
  gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
  if args.config:
    from flan_jax.models import configs  # pylint: disable=import-outside-toplevel
    return configs.get_config(args.config)
  return None


def run(argv: Sequence[str]) -> None:
  args = _parser().parse_args(gin_utils.rewrite_gin_args(argv))
  if args.command == "t5x-to-flax":
    loaded = core.load_t5x(args.input, _t5x_config(args), args.vocab or _default_vocab(),
                           with_optimizer_state=args.with_optimizer_state,
                           param_scan_axis=args.t5x_param_scan_axis)
    out = core.save_flax(loaded, args.output)
    if loaded.opt_state is not None:
      print(f"optimizer state at step {loaded.step}: {loaded.opt_report}")
  elif args.command == "hf-to-flax":
    out = core.hf_to_flax(args.input, args.output, allow_pickle=args.allow_pickle,
                          vocab_path=args.vocab)
  elif args.command == "flax-to-hf":
    out = core.flax_to_hf(args.input, args.output, step=args.step)
  else:
    out = core.flax_to_t5x(args.input, args.output, step=args.step,
                           with_optimizer_state=args.with_optimizer_state,
                           scanned=args.t5x_scan_layers, param_scan_axis=args.t5x_param_scan_axis,
                           min_dim_size_to_factor=args.t5x_min_dim_size_to_factor)
  print(f"wrote {out}")


def _default_vocab() -> str:
  from flan_jax.data import vocab  # pylint: disable=import-outside-toplevel
  return vocab.t5_vocabulary().sentencepiece_model_file


def main(argv: Sequence[str] | None = None) -> int:
  try:
    run(sys.argv[1:] if argv is None else argv)
  except (ValueError, FileNotFoundError) as e:  # incl. ParamMismatchError, GinConfigError
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
