"""Imports every module that registers gin configurables, so any gin file can name them.

Each module adds its import here when it defines a `@gin.configurable`.
"""
# pylint: disable=unused-import
import flan_jax.evaluation.runner
import flan_jax.metrics
import flan_jax.models.configs
import flan_jax.optim
import flan_jax.partitioning
import flan_jax.train
