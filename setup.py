"""flan_jax: instruction finetuning (Flan-T5 / Flan-PaLM style) in JAX, T5X-style."""
from pathlib import Path

import setuptools

HERE = Path(__file__).parent


def _requirements(name: str) -> list[str]:
  lines = (HERE / "requirements" / name).read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


# `tasks/`, `mixtures/` and `gin/` live at the top of the repository for readability but are
# installed inside the flan_jax namespace, so no generic top-level names land in site-packages.
PACKAGE_DIRS = {
    "flan_jax": "flan_jax",
    "flan_jax.tasks": "tasks",
    "flan_jax.mixtures": "mixtures",
    "flan_jax.gin_configs": "gin",
}
packages = setuptools.find_packages(include=["flan_jax", "flan_jax.*"])
for mapped, folder in [("flan_jax.tasks", "tasks"), ("flan_jax.mixtures", "mixtures")]:
  packages.append(mapped)
  packages += [f"{mapped}.{p}" for p in setuptools.find_packages(where=folder)]
packages.append("flan_jax.gin_configs")

setuptools.setup(
    name="flan_jax",
    version="0.1.0",
    description="Instruction finetuning of T5 and decoder-only models in JAX (Flan 2022 style).",
    python_requires=">=3.11",
    packages=packages,
    package_dir=PACKAGE_DIRS,
    package_data={"flan_jax.gin_configs": ["*.gin", "models/*.gin", "runs/*.gin"]},
    # seqio, tensorflow-text and t5 are installed with --no-deps (requirements/nodeps.txt): their
    # declared dependencies drag in full `tensorflow` and the *-nightly packages.
    install_requires=_requirements("base.txt"),
    extras_require={
        "test": _requirements("test.txt"),
        "tpu": ["jax[tpu]==0.10.2"],
        "hf": _requirements("hf.txt"),
        "notebooks": ["nbclient", "nbformat", "ipykernel", "matplotlib"],
        "beam": ["apache-beam==2.77.0"],
    },
)
