"""The inference notebook runs top to bottom (nbclient) on a tiny random T5 model directory."""
import os

import nbformat
import pytest
from nbclient import NotebookClient


def test_inference_notebook_executes(repo_root, tiny_t5_model_dir, monkeypatch):
  notebook = nbformat.read(repo_root / "notebooks" / "inference.ipynb", as_version=4)
  monkeypatch.setenv("FLAN_JAX_CHECKPOINT", str(tiny_t5_model_dir))
  monkeypatch.setenv("FLAN_JAX_MAX_DECODE_LENGTH", "8")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(repo_root)}})
  client.execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "LoadedModel loaded from" in outputs
  assert "extracted answer:" in outputs and "majority:" in outputs
  assert os.path.basename(str(tiny_t5_model_dir)) in outputs
