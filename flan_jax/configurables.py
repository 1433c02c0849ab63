"""Imports every module that registers gin configurables, so any gin file can name them.

Each module adds its import here when it defines a `@gin.configurable`.
"""
# pylint: disable=unused-import
