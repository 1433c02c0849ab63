"""The `demo` mixture: all `demo_*` tasks, the short-answer ones at twice the rate.

Training loss is summed over target tokens, so a task with 2-token answers gets far less gradient per
example than one with 60-token rationales; doubling the short-answer tasks keeps them visible to a
tiny model trained for a few hundred steps.
"""
import seqio

from flan_jax.tasks import demo

DEMO_MIXTURE = "demo"
SHORT_ANSWER_TASKS = ("demo_compare", "demo_sentiment", "demo_parity", "demo_boolean")
DEMO_RATES = {name: 2.0 if name in SHORT_ANSWER_TASKS else 1.0 for name in demo.DEMO_TASKS}

if DEMO_MIXTURE in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.remove(DEMO_MIXTURE)
seqio.MixtureRegistry.add(DEMO_MIXTURE, list(DEMO_RATES.items()))
