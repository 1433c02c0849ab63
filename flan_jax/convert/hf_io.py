"""Hugging Face checkpoint files and the weight-table machinery shared by the T5 and Llama mappings.

Reads `model.safetensors` (or the sharded `model.safetensors.index.json` set); PyTorch `.bin`
files only when the caller passes `allow_pickle=True`, since unpickling runs arbitrary code.
Writes `config.json` + `model.safetensors` + the tokenizer model.

A weight table is a list of `(hf_template, flax_template, kind)` rows where templates may contain
`{i}` (layer index) and `kind` says how a torch `[out, in]` Linear weight relates to the flax kernel:
`in` (kernel's first axis is the input), `out` (kernel's last axis is the output), `transpose`
(2-D transpose), `copy`.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("spiece.model", "tokenizer.model")

Table = Sequence[tuple[str, str, str]]


def is_hf_dir(path: str | Path) -> bool:
  path = Path(path)
  return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_config(hf_dir: str | Path) -> dict[str, Any]:
  path = Path(hf_dir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: '{hf_dir}' is not a Hugging Face model directory")
  return json.loads(path.read_text())


def read_state_dict(hf_dir: str | Path, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """All tensors of a HF checkpoint as float32/int numpy arrays (bf16/f16 upcast to float32)."""
  hf_dir = Path(hf_dir)
  if (hf_dir / SAFETENSORS_INDEX).is_file():
    shards = sorted(set(json.loads((hf_dir / SAFETENSORS_INDEX).read_text())["weight_map"].values()))
    return _read_safetensors([hf_dir / s for s in shards])
  if (hf_dir / SAFETENSORS_FILE).is_file():
    return _read_safetensors([hf_dir / SAFETENSORS_FILE])
  pickles = [hf_dir / name for name in PICKLE_FILES if (hf_dir / name).is_file()]
  if not pickles:
    raise FileNotFoundError(f"no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or pytorch_model.bin in "
                            f"'{hf_dir}'")
  if not allow_pickle:
    raise ValueError(
        f"'{hf_dir}' holds only PyTorch pickle weights ({pickles[0].name}); loading them can run "
        f"arbitrary code. Convert them to safetensors, or pass --allow_pickle if you trust the source.")
  return _read_pickles(hf_dir, pickles[0])


def _read_safetensors(paths: Sequence[Path]) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  out = {}
  for path in paths:
    with safe_open(str(path), framework="pt") as f:
      for key in f.keys():
        out[key] = _to_numpy(f.get_tensor(key))
  return out


def _read_pickles(hf_dir: Path, first: Path) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel
  files = [first]
  if first.name.endswith(".index.json"):
    files = [hf_dir / s for s in sorted(set(json.loads(first.read_text())["weight_map"].values()))]
  out = {}
  for path in files:
    for key, tensor in torch.load(path, map_location="cpu", weights_only=False).items():
      out[key] = _to_numpy(tensor)
  return out


def _to_numpy(tensor: Any) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  if tensor.is_floating_point():
    tensor = tensor.to(torch.float32)
  return tensor.numpy()


def write_checkpoint(hf_dir: str | Path, config: Mapping[str, Any],
                     state: Mapping[str, np.ndarray], tokenizer_model: str | Path | None,
                     tokenizer_name: str) -> None:
  """Writes config.json, model.safetensors (float32) and the SentencePiece model."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  hf_dir = Path(hf_dir)
  hf_dir.mkdir(parents=True, exist_ok=True)
  (hf_dir / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
  arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
  save_file(arrays, str(hf_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
  if tokenizer_model is not None:
    shutil.copyfile(tokenizer_model, hf_dir / tokenizer_name)


def find_tokenizer_model(hf_dir: str | Path) -> Path | None:
  for name in TOKENIZER_FILES:
    if (Path(hf_dir) / name).is_file():
      return Path(hf_dir) / name
  return None


def _expand(table: Table, num_layers: Mapping[str, int]) -> list[tuple[str, str, str]]:
  """Rows with `{i}` repeated for every layer of the stack the flax template names."""
  rows = []
  for hf, flax, kind in table:
    if "{i}" not in hf:
      rows.append((hf, flax, kind))
      continue
    stack = flax.split("/")[0]
    rows.extend((hf.format(i=i), flax.format(i=i), kind) for i in range(num_layers[stack]))
  return rows


def hf_to_flat(state: Mapping[str, np.ndarray], table: Table, num_layers: Mapping[str, int],
               ignored: Sequence[str], source: str) -> dict[str, np.ndarray]:
  """HF tensors → flat flan_jax params (unscanned names); unknown HF names are an error."""
  rows = _expand(table, num_layers)
  out = {}
  missing = [hf for hf, _, _ in rows if hf not in state]
  if missing:
    raise ValueError(f"{source} lacks {len(missing)} expected tensors, e.g. {missing[:5]}; the "
                     f"checkpoint does not match its config.json")
  known = {hf for hf, _, _ in rows}
  unknown = sorted(k for k in state if k not in known and not any(re.fullmatch(p, k) for p in ignored))
  if unknown:
    raise ValueError(f"{source} has tensors this converter does not know: {unknown[:8]}; the "
                     f"architecture is not supported (check config.json's model_type / options)")
  for hf, flax, kind in rows:
    value = np.asarray(state[hf])
    out[flax] = value if kind == "copy" else value.T
  return out


def flat_to_hf(flat: Mapping[str, np.ndarray], table: Table,
               num_layers: Mapping[str, int]) -> dict[str, np.ndarray]:
  """Flat unscanned flan_jax params → HF tensors (torch Linear `[out, in]` layout)."""
  out = {}
  for hf, flax, kind in _expand(table, num_layers):
    if flax not in flat:
      raise ValueError(f"parameter {flax} is missing from the flan_jax checkpoint; cannot write {hf}")
    value = np.asarray(flat[flax])
    if kind == "in":
      value = value.reshape(value.shape[0], -1).T
    elif kind == "out":
      value = value.reshape(-1, value.shape[-1]).T
    elif kind == "transpose":
      value = value.T
    out[hf] = value
  return out
