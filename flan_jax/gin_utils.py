"""Gin plumbing shared by the entry points (`python -m flan_jax.{train,eval,infer}`).

T5X conventions: `--gin_file=runs/demo.gin` (resolved against `--gin_search_paths` and the gin
files packaged with flan_jax), `--gin.KEY=VALUE` as a shorthand for `--gin_bindings='KEY = VALUE'`.
Every mistake a user can make here ends in one `GinConfigError` line that names the problem.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import gin
from absl import app, flags

FLAGS = flags.FLAGS


class GinConfigError(ValueError):
  """A gin file, binding or macro the user supplied is wrong; the message says how to fix it."""


def packaged_gin_dir() -> Path:
  """The folder holding flan_jax's own gin files (`models/`, `runs/`).

  A wheel install carries them as `flan_jax/gin_configs/`; a source checkout (and an editable
  install) reads the repository's top-level `gin/`. The folder has no `__init__.py` on purpose:
  as a regular package it would shadow the `gin` (gin-config) module when run from the repo root.
  """
  package_root = Path(__file__).resolve().parent
  for candidate in (package_root / "gin_configs", package_root.parent / "gin"):
    if (candidate / "runs").is_dir() or (candidate / "models").is_dir():
      return candidate
  raise FileNotFoundError(f"flan_jax's gin files are missing (looked in {package_root / 'gin_configs'} "
                          f"and {package_root.parent / 'gin'}); reinstall flan_jax.")


def define_gin_flags() -> None:
  """Defines --gin_file, --gin_bindings and --gin_search_paths (idempotent)."""
  if "gin_file" in FLAGS:
    return
  flags.DEFINE_multi_string(
      "gin_file", [], "Gin config file, absolute or relative to a search path (e.g. runs/demo.gin). Repeatable.")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "One gin binding, e.g. 'TRAIN_STEPS = 100'. `--gin.TRAIN_STEPS=100` is the same. Repeatable.")
  flags.DEFINE_list(
      "gin_search_paths", [], "Extra folders in which --gin_file names are looked up (before flan_jax's own gin/).")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns `--gin.KEY=VALUE` (and `--gin.KEY VALUE`) into `--gin_bindings=KEY = VALUE`."""
  out: list[str] = []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" in body:
        key, value = body.split("=", 1)
      elif i + 1 < len(args):
        key, value = body, args[i + 1]
        i += 1
      else:
        raise GinConfigError(f"`{arg}` has no value: write it as --gin.{body}=VALUE")
      out.append(f"--gin_bindings={key} = {value}")
    else:
      out.append(arg)
    i += 1
  return out


def _search_paths(extra: Sequence[str]) -> list[Path]:
  return [Path(p).expanduser() for p in extra] + [Path.cwd(), packaged_gin_dir()]


def resolve_gin_file(name: str, search_paths: Sequence[str] = ()) -> Path:
  """Finds a gin file by absolute path or relative to the search paths; suggests close names."""
  candidate = Path(name).expanduser()
  if candidate.is_absolute():
    if candidate.exists():
      return candidate
  else:
    for root in _search_paths(search_paths):
      if (root / candidate).is_file():
        return root / candidate
  known = sorted(str(p.relative_to(packaged_gin_dir())) for p in packaged_gin_dir().rglob("*.gin"))
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  hint = f" Did you mean: {', '.join(close)}?" if close else f" Packaged gin files: {', '.join(known)}."
  roots = ", ".join(str(p) for p in _search_paths(search_paths))
  raise GinConfigError(f"gin file '{name}' not found (searched {roots}).{hint}")


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              search_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Parses gin files and bindings; raises GinConfigError with one clear line on any mistake."""
  if not gin_files and not gin_bindings:
    return  # Nothing to bind: spares eval/infer the TensorFlow import that configurables brings.
  # Registers every configurable that a gin file may name.
  import flan_jax.configurables  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  for root in _search_paths(search_paths):
    if root.is_dir():
      gin.add_config_file_search_path(str(root))
  paths = [resolve_gin_file(f, search_paths) for f in gin_files]
  if paths:
    _check_macro_bindings(paths, gin_bindings, search_paths)
  try:
    with _quiet_gin_include_probes():
      gin.parse_config_files_and_bindings([str(p) for p in paths], list(gin_bindings),
                                          finalize_config=finalize)
  except (ValueError, KeyError, SyntaxError, TypeError, ImportError) as e:
    raise GinConfigError(_explain_gin_error(e, gin_bindings)) from e


class _DropIncludeProbes(logging.Filter):
  """Drops gin's per-candidate 'Path not found' lines logged while it probes include locations.

  gin tries every search path for an `include` and logs each miss at ERROR level, so a correct
  config printed error lines. Misses that matter still fail the parse with a clear error.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


@contextlib.contextmanager
def _quiet_gin_include_probes():
  root = logging.getLogger()
  probe_filter = _DropIncludeProbes()
  root.addFilter(probe_filter)
  try:
    yield
  finally:
    root.removeFilter(probe_filter)


_MACRO_BINDING = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=")
_MACRO_REFERENCE = re.compile(r"%([A-Z][A-Z0-9_]*)")
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.MULTILINE)


def _check_macro_bindings(paths: Sequence[Path], bindings: Sequence[str],
                          search_paths: Sequence[str]) -> None:
  """Gin accepts a binding of a macro no file uses; a typo there would silently do nothing."""
  referenced: set[str] = set()
  pending, seen = list(paths), set()
  while pending:
    path = pending.pop()
    if path in seen:
      continue
    seen.add(path)
    text = path.read_text()
    referenced |= set(_MACRO_REFERENCE.findall(text))
    pending += [resolve_gin_file(name, search_paths) for name in _INCLUDE.findall(text)]
  for binding in bindings:
    referenced |= set(_MACRO_REFERENCE.findall(binding))
  for binding in bindings:
    match = _MACRO_BINDING.match(binding)
    if match and match.group(1) not in referenced:
      name = match.group(1)
      close = difflib.get_close_matches(name, sorted(referenced), n=3)
      hint = (f"Did you mean {' or '.join(close)}?" if close
              else f"Macros used: {', '.join(sorted(referenced))}.")
      raise GinConfigError(f"bad gin binding: macro {name} is not used by the gin files "
                           f"({', '.join(p.name for p in paths)}). {hint}")


def _explain_gin_error(error: Exception, bindings: Sequence[str]) -> str:
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  match = re.search(r"No configurable matching '([^']+)'", str(error))
  if match:
    name = match.group(1)
    known = sorted({selector.split(".")[-1] for selector, _ in gin.config._REGISTRY.items()})  # pylint: disable=protected-access
    close = difflib.get_close_matches(name.split(".")[-1], known, n=3)
    hint = f" Close configurables: {', '.join(close)}." if close else ""
    return f"bad gin binding: no configurable named '{name}'.{hint}"
  match = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", str(error))
  if match:
    return (f"bad gin binding: '{match.group(1)}' has no parameter '{match.group(2)}'; "
            f"check the spelling in --gin.{match.group(1)}.{match.group(2)}=... or the gin file.")
  match = re.search(r"([A-Z][A-Z0-9_]*)/macro\.value set to `%gin\.REQUIRED`", str(error))
  if match:
    name = match.group(1)
    return (f"missing required setting {name}: the gin files leave it as %gin.REQUIRED. "
            f"Set it on the command line, e.g. --gin.{name}=..., or in a gin file.")
  if "Unable to parse" in str(error) or isinstance(error, SyntaxError):
    return f"bad gin syntax: {text} (bindings given: {list(bindings)}){_unquoted_string_hint(bindings)}"
  return f"bad gin configuration: {text}"


def _unquoted_string_hint(bindings: Sequence[str]) -> str:
  """Gin values are Python literals, so `--gin.MODEL_DIR=/tmp/run` fails: suggest the quotes."""
  for binding in bindings:
    key, _, value = binding.partition("=")
    value = value.strip()
    if not value or value[0] in "'\"@%[({" or value in ("True", "False", "None"):
      continue
    try:
      ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return (f". String values need quotes inside the flag: "
              f"--gin.{key.strip()}=\"'{value}'\"")
  return ""


def explain_missing_required(error: Exception) -> str | None:
  """One line for gin's 'Required bindings ... not provided' error, or None if it is another error."""
  match = re.search(r"Required bindings for `([^`]+)` not provided in config: \[([^\]]*)\]", str(error))
  if not match:
    return None
  missing = [m.strip(" '\"") for m in match.group(2).split(",") if m.strip()]
  macros = ", ".join(m.upper() for m in missing)
  return (f"missing required setting for {match.group(1)}: {', '.join(missing)}. "
          f"Set it in a gin file or on the command line, e.g. --gin.{missing[0].upper()}=... (macro {macros}).")


def run(main: Callable[[], object]) -> None:
  """Runs an absl main with gin flags; a user mistake ends with one `error:` line on stderr, exit 1.

  `--help` prints the calling module's docstring (absl) followed by the flags.
  """
  define_gin_flags()

  def _main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
      parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
      main()
    except GinConfigError as e:
      raise SystemExit(f"error: {e}") from None
    except (ValueError, TypeError, RuntimeError) as e:
      line = explain_missing_required(e)
      if line is None:
        raise
      raise SystemExit(f"error: {line}") from None

  def _parse(argv: Sequence[str]) -> list[str]:
    try:
      return FLAGS(rewrite_gin_args(argv))
    except GinConfigError as e:
      raise SystemExit(f"error: {e}") from None
    except flags.Error as e:
      raise SystemExit(f"error: {e}\nRun with --help for the flags.") from None

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  app.run(_main, flags_parser=_parse)
