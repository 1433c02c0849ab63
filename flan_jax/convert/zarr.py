"""A minimal reader for zarr v2 arrays as tensorstore writes them in T5X and Orbax checkpoints.

Only what those checkpoints use: C order, chunk files named `i.j.k` (or `0` for scalars),
gzip / zstd / no compression, little- or big-endian numeric dtypes. The array metadata comes from
the folder's `.zarray` file when present, else from the caller (T5X's tensorstore index keeps it
in the `checkpoint` msgpack file; Orbax fixtures sometimes ship without `.zarray`).
"""
from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_TENSORSTORE_DTYPES = {
    "bfloat16": "bfloat16", "float16": "<f2", "float32": "<f4", "float64": "<f8",
    "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "uint8": "|u1",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "bool": "|b1",
}


def _numpy_dtype(dtype: str) -> np.dtype:
  dtype = _TENSORSTORE_DTYPES.get(dtype, dtype)
  if dtype.lstrip("<>|") in ("bfloat16", "V2"):
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(dtype)


def _decompress(data: bytes, compressor: dict[str, Any] | None, path: Path) -> bytes:
  if not compressor:
    return data
  codec = compressor.get("id")
  if codec == "gzip":
    return gzip.decompress(data)
  if codec == "zstd":
    import zstandard  # pylint: disable=import-outside-toplevel
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)
  raise ValueError(f"{path}: zarr compressor '{codec}' is not supported (gzip, zstd or none)")


def read_array(folder: str | Path, shape: Sequence[int] | None = None, dtype: str | None = None,
               chunks: Sequence[int] | None = None,
               compressor: dict[str, Any] | None = None) -> np.ndarray:
  """Reads one zarr v2 array folder into a numpy array.

  Keyword arguments override (or stand in for a missing) `.zarray`; `compressor=None` with no
  `.zarray` means "detect gzip / zstd from the chunk bytes".
  """
  folder = Path(folder)
  meta: dict[str, Any] = {}
  if (folder / ".zarray").exists():
    meta = json.loads((folder / ".zarray").read_text())
  shape = tuple(meta.get("shape", shape) if shape is None else shape)
  dtype = meta.get("dtype", dtype) if dtype is None else dtype
  if shape is None or dtype is None:
    raise ValueError(f"{folder} has no .zarray metadata and no shape/dtype was given; pass the "
                     f"array's expected shape and dtype (e.g. from the model config)")
  chunks = tuple(meta.get("chunks", chunks or shape) if chunks is None else chunks)
  compressor = meta.get("compressor", compressor) if compressor is None else compressor
  if meta.get("order", "C") != "C":
    raise ValueError(f"{folder}: Fortran-ordered zarr arrays are not supported")
  separator = meta.get("dimension_separator", ".")
  np_dtype = _numpy_dtype(dtype)
  fill = meta.get("fill_value") or 0
  out = np.full(shape, fill, dtype=np_dtype)
  grid = [range(-(-s // c)) if c else range(1) for s, c in zip(shape, chunks)]
  for index in itertools.product(*grid):
    name = separator.join(str(i) for i in index) if index else "0"
    chunk_path = folder / name
    if not chunk_path.exists():
      continue  # zarr leaves chunks equal to the fill value unwritten.
    raw = chunk_path.read_bytes()
    codec = compressor if compressor else _sniff_compressor(raw)
    data = np.frombuffer(_decompress(raw, codec, chunk_path), dtype=np_dtype)
    chunk = data.reshape(chunks)
    region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
    out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
  return out.astype(np_dtype.newbyteorder("="), copy=False)


def _sniff_compressor(raw: bytes) -> dict[str, Any] | None:
  if raw[:2] == b"\x1f\x8b":
    return {"id": "gzip"}
  if raw[:4] == b"\x28\xb5\x2f\xfd":
    return {"id": "zstd"}
  return None
