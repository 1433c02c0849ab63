"""The shipped model configs match the published parameter counts, via the README's info command."""
import json
import re

from flan_jax.models import configs


def test_readme_info_command_reports_published_sizes(repo_root, capsys):
  """Runs the README's `python -m flan_jax.models.info ...` line (in process: no second import)."""
  from flan_jax.models import info  # pylint: disable=import-outside-toplevel
  readme = (repo_root / "README.md").read_text()
  models_section = readme[readme.index("## Models"):]
  command = re.search(r"^python -m flan_jax\.models\.info(.*)$", models_section, re.M)
  assert info.main(command.group(1).split()) == 0
  out = capsys.readouterr().out
  rows = {r["name"]: r for r in json.loads(out)}
  assert set(rows) == set(configs.CONFIGS)
  for name, published in configs.PUBLISHED_PARAMS.items():
    assert abs(rows[name]["params"] - published) / published < 0.02, (name, rows[name])
  assert rows["flan_t5_small"]["family"] == "t5" and rows["palm_540b"]["family"] == "decoder"
  # Exact counts a shape mistake would change (T5 v1.1 small: untied head, 8+8 layers).
  assert rows["flan_t5_small"]["params"] == 76_961_152
  assert rows["palm_8b"]["params"] == 8_632_012_800


def test_info_rejects_unknown_names(capsys):
  from flan_jax.models import info  # pylint: disable=import-outside-toplevel
  assert info.main(["flan_t5_smal"]) == 2
  assert "unknown model config 'flan_t5_smal'; did you mean flan_t5_small" in capsys.readouterr().err
