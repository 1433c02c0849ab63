"""The inference notebook runs top to bottom (nbclient) on a tiny random T5 model directory."""
import os

import jax
import nbformat
import pytest
from nbclient import NotebookClient

from flan_jax import model_dir as model_dir_lib
from flan_jax import models
from flan_jax.models import configs


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, t5_vocab_path):
  path = tmp_path_factory.mktemp("notebook_model")
  spec = model_dir_lib.write_spec(path, "t5", configs.CONFIGS["flan_t5_tiny"], t5_vocab_path)
  model = models.build_model(spec, path)
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 16), "decoder_input_tokens": (2, 8)})
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, variables["params"],
                        is_leaf=lambda x: hasattr(x, "names"))
  model_dir_lib.save_params(path, 0, params)
  return path


def test_inference_notebook_executes(repo_root, tiny_model_dir, monkeypatch):
  notebook = nbformat.read(repo_root / "notebooks" / "inference.ipynb", as_version=4)
  monkeypatch.setenv("FLAN_JAX_CHECKPOINT", str(tiny_model_dir))
  monkeypatch.setenv("FLAN_JAX_MAX_DECODE_LENGTH", "8")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(repo_root)}})
  client.execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "LoadedModel loaded from" in outputs
  assert "extracted answer:" in outputs and "majority:" in outputs
  assert os.path.basename(str(tiny_model_dir)) in outputs
