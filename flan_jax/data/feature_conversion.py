"""Packed model features from task/mixture streams: encoder-decoder or prefix-LM, at Flan's 2,048/512.

Thin wrapper over SeqIO's converters so the trainer, benchmarks and tests build batches one way.
Packing concatenates several examples per row; `*_segment_ids` (1, 2, ... per example, 0 = padding)
and `*_positions` (restarting at 0 per example) let attention stay within each example.
"""
from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

FLAN_FEATURE_LENGTHS = {"inputs": 2048, "targets": 512}
CONVERTERS = {"encdec": seqio.EncDecFeatureConverter, "prefix_lm": seqio.PrefixLMFeatureConverter}


def converter(kind: str, pack: bool = True) -> seqio.FeatureConverter:
  """The SeqIO feature converter for `kind` ("encdec" or "prefix_lm")."""
  if kind not in CONVERTERS:
    raise ValueError(f"Unknown feature conversion '{kind}': use {' or '.join(CONVERTERS)}.")
  return CONVERTERS[kind](pack=pack)


def packed_batches(dataset: tf.data.Dataset, kind: str, *, batch_size: int,
                   feature_lengths: Optional[Mapping[str, int]] = None,
                   pack: bool = True) -> tf.data.Dataset:
  """Tokenized `inputs`/`targets` examples → packed model batches of `batch_size` rows.

  For "prefix_lm" the decoder length is inputs + targets (2,560 at Flan's lengths) and
  `decoder_causal_attention` marks the input prefix, which attends bidirectionally.
  """
  lengths = dict(feature_lengths or FLAN_FEATURE_LENGTHS)
  features = converter(kind, pack)(dataset, lengths)
  return features.batch(batch_size, drop_remainder=True)
