"""T5X checkpoint readers on T5X's own fixtures: legacy msgpack, tensorstore/zarr and Orbax layouts."""
import gzip
import json
import shutil

import numpy as np
import pytest
from flax import serialization

from conftest import require_shared_data
from flan_jax.convert import params as params_lib
from flan_jax.convert import t5x, zarr


@pytest.fixture(scope="module")
def ckpt_dir():
  return require_shared_data("t5x_checkpoints")


@pytest.fixture(scope="module")
def legacy(ckpt_dir):
  return t5x.read_checkpoint(ckpt_dir / "test_t5_tiny.checkpoint_0")


def test_layouts_detected(ckpt_dir, tmp_path):
  assert t5x.detect_layout(ckpt_dir / "test_t5_tiny.checkpoint_0") == "legacy"
  assert t5x.detect_layout(ckpt_dir / "tiny_t5") == "tensorstore"
  assert t5x.detect_layout(ckpt_dir / "tiny_t5" / "checkpoint_1") == "tensorstore"
  assert t5x.detect_layout(ckpt_dir / "tiny_orbax") == "orbax"
  (tmp_path / "notes.txt").write_text("not a checkpoint")
  assert t5x.detect_layout(tmp_path / "notes.txt") is None
  assert t5x.detect_layout(tmp_path) is None


def test_legacy_checkpoint_is_t5_1_1_tiny(legacy):
  flat = params_lib.flatten(legacy.params)
  assert legacy.layout == "legacy" and legacy.step == 0
  assert flat["token_embedder/embedding"].shape == (32128, 8)
  assert flat["encoder/layers_1/attention/query/kernel"].shape == (8, 12)
  assert flat["decoder/logits_dense/kernel"].shape == (8, 32128)
  assert flat["decoder/relpos_bias/rel_embedding"].shape == (4, 32)
  assert params_lib.count_layers(flat, "encoder") == 2
  assert params_lib.count_layers(flat, "decoder") == 2
  # 2 encoder layers x 9, 2 decoder layers x 14, relpos x2, norms x2, embedding, logits.
  assert len(flat) == 2 * 9 + 2 * 14 + 2 + 2 + 1 + 1
  assert all(v.dtype == np.float32 for v in flat.values())
  # Adafactor state: factored second moments for 2-D kernels.
  query_state = legacy.param_states["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert set(query_state) == {"m", "v", "v_row", "v_col"}


def test_legacy_matches_flax_deserialization(ckpt_dir, legacy):
  raw = serialization.msgpack_restore((ckpt_dir / "test_t5_tiny.checkpoint_0").read_bytes())
  expected = raw["optimizer"]["target"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  np.testing.assert_array_equal(legacy.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"], expected)


def test_tensorstore_layout_matches_tensorstore_library(ckpt_dir, tmp_path):
  import tensorstore as ts
  ckpt = t5x.read_checkpoint(ckpt_dir / "tiny_t5")
  assert ckpt.layout == "tensorstore" and ckpt.step == 1
  states = ckpt.param_states
  assert states["kernel"].shape == (10, 5) and states["kernel"].dtype == np.float64
  np.testing.assert_array_equal(states["bias"], np.ones(5, np.float32))
  assert int(states["step"]) == 1
  # Independent reader: tensorstore itself, on a copy (it writes the .zarray the fixture lacks).
  folder = tmp_path / "kernel"
  shutil.copytree(ckpt_dir / "tiny_t5/checkpoint_1/state.param_states.kernel", folder)
  index = serialization.msgpack_restore((ckpt_dir / "tiny_t5/checkpoint_1/checkpoint").read_bytes())
  meta = index["optimizer"]["state"]["param_states"]["kernel"]["metadata"]
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(folder)},
          "metadata": {**meta, "dtype": "<f8"}}
  reference = ts.open(spec, create=True, open=True).result().read().result()
  np.testing.assert_array_equal(states["kernel"], reference)


def test_orbax_layout_needs_shapes_and_matches_tensorstore(ckpt_dir):
  tensorstore_ckpt = t5x.read_checkpoint(ckpt_dir / "tiny_t5")
  with pytest.raises(ValueError, match=r"state/param_states/\w+' .*no .zarray metadata"):
    t5x.read_checkpoint(ckpt_dir / "tiny_orbax")
  shapes = {f"state/param_states/{k}": (v.shape, str(v.dtype))
            for k, v in tensorstore_ckpt.param_states.items()}
  shapes["state/step"] = ((), "int32")
  ckpt = t5x.read_checkpoint(ckpt_dir / "tiny_orbax", shapes=shapes)
  assert ckpt.layout == "orbax" and ckpt.step == 1
  for name, value in tensorstore_ckpt.param_states.items():
    np.testing.assert_array_equal(ckpt.param_states[name], value)
    assert ckpt.param_states[name].dtype == value.dtype


def test_zarr_reader_assembles_partial_chunks_with_zarray(tmp_path):
  full = np.arange(7 * 5, dtype=">i4").reshape(7, 5)
  folder = tmp_path / "arr"
  folder.mkdir()
  (folder / ".zarray").write_text(json.dumps({
      "shape": [7, 5], "chunks": [4, 3], "dtype": ">i4", "order": "C", "fill_value": 0,
      "compressor": {"id": "gzip", "level": 1}, "zarr_format": 2, "filters": None}))
  for i in range(2):
    for j in range(2):
      chunk = np.zeros((4, 3), ">i4")
      part = full[i * 4:(i + 1) * 4, j * 3:(j + 1) * 3]
      chunk[:part.shape[0], :part.shape[1]] = part
      (folder / f"{i}.{j}").write_bytes(gzip.compress(chunk.tobytes()))
  (folder / "1.1").unlink()  # an unwritten chunk reads as the fill value
  out = zarr.read_array(folder)
  expected = full.astype(np.int32).copy()
  expected[4:, 3:] = 0
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == np.int32


def test_missing_and_malformed_paths_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    t5x.read_checkpoint(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no 'checkpoint' file"):
    t5x.read_checkpoint(tmp_path)


def test_fit_params_stacks_reshapes_and_reports_every_mismatch():
  import jax
  sds = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)  # noqa: E731
  flat = {"encoder/layers_0/attention/query/kernel": np.arange(24, dtype=np.float64).reshape(4, 6),
          "encoder/layers_1/attention/query/kernel": np.ones((4, 6)),
          "token_embedder/embedding": np.zeros((10, 4))}
  scanned = {"encoder/layers/attention/query/kernel": sds(2, 4, 2, 3),
             "token_embedder/embedding": sds(10, 4)}
  fitted = params_lib.fit_params(flat, scanned, "src")
  kernel = fitted["encoder"]["layers"]["attention"]["query"]["kernel"]
  assert kernel.shape == (2, 4, 2, 3) and kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel[0].reshape(4, 6), flat["encoder/layers_0/attention/query/kernel"])
  unstacked = params_lib.unstack_layers(params_lib.flatten(fitted))
  np.testing.assert_array_equal(unstacked["encoder/layers_1/attention/query/kernel"].reshape(4, 6),
                                np.ones((4, 6)))
  wrong = {"token_embedder/embedding": sds(12, 4), "decoder/decoder_norm/scale": sds(4)}
  with pytest.raises(params_lib.ParamMismatchError) as error:
    params_lib.fit_params({"token_embedder/embedding": np.zeros((10, 4)), "extra/w": np.zeros(3)},
                          wrong, "checkpoint X")
  message = str(error.value)
  assert "checkpoint X does not fit the model config (3 problems)" in message
  assert "parameter token_embedder/embedding: expected shape (12, 4), found (10, 4)" in message
  assert "missing parameter decoder/decoder_norm/scale: expected shape (4,)" in message
  assert "unexpected parameter extra/w with shape (3,)" in message
