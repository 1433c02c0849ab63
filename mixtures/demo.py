"""The `demo` mixture: every `demo_*` task at an equal rate."""
import seqio

from flan_jax.tasks import demo

DEMO_MIXTURE = "demo"
DEMO_RATES = {name: 1.0 for name in demo.DEMO_TASKS}

if DEMO_MIXTURE in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.remove(DEMO_MIXTURE)
seqio.MixtureRegistry.add(DEMO_MIXTURE, list(DEMO_RATES.items()))
