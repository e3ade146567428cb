"""GRec's BERT-style masked item prediction, as seeded in-graph ops.

The original (`GRec_TF_Pretrain.create_masked_lm_predictions`) masks every
training batch in Python with `random.Random()` and feeds the result through
`feed_dict`. `mask_items` computes the same thing with TensorFlow ops, so it
can run inside a `tf.data` map (with a stateless seed per batch) or inside a
model function, and it is reproducible for a given seed.

Per sequence (docs/MODEL.md §3):
- every position is a candidate (the original has no `[CLS]`/`[SEP]`; the
  data's pad token is an ordinary item and can be chosen);
- `num_to_predict = min(max_predictions_per_seq,
  max(1, round(seq_length * masked_lm_prob)))` positions are chosen uniformly
  at random without replacement (the original shuffles the candidates and
  takes the first ones); `round` is Python 2's (halves away from zero), which
  the original ran under;
- each chosen position becomes id 0 with probability 0.8, keeps its item with
  probability 0.1 and becomes a uniformly random id in [0, item_size) with
  probability 0.1 (the original draws from the vocabulary's values, which
  include id 0);
- positions are returned in increasing order with the original items as
  labels. Every sequence has exactly `num_to_predict` predictions, so the
  original's label weights are all 1.0 and are not returned.
"""
import math

import tensorflow as tf

from ops import layers

MASK_ID = 0                # the original masks with id 0 (`<UNK>`)
MASK_PROBABILITY = 0.8     # chosen position -> MASK_ID
KEEP_PROBABILITY = 0.1     # chosen position keeps its item
# The remaining 0.1: a random id in [0, item_size).


def python2_round(value):
  """round() of Python 2 for value >= 0: halves go up (2.5 -> 3, 4.5 -> 5)."""
  if value < 0:
    raise ValueError("python2_round expects a non-negative value, got %r" %
                     (value,))
  floor = math.floor(value)
  return int(floor + 1 if value - floor >= 0.5 else floor)


def num_to_predict(seq_length, masked_lm_prob=0.3, max_predictions_per_seq=30):
  """Masked positions per sequence of `seq_length` items (an int >= 1)."""
  if not 0.0 < masked_lm_prob <= 1.0:
    raise ValueError("masked_lm_prob must be in (0, 1], got %r" %
                     (masked_lm_prob,))
  if max_predictions_per_seq < 1:
    raise ValueError("max_predictions_per_seq must be >= 1, got %r" %
                     (max_predictions_per_seq,))
  return min(max_predictions_per_seq,
             max(1, python2_round(seq_length * masked_lm_prob)))


def _uniform_draws(shapes_and_ranges, seed, stateless_seed):
  """One uniform Tensor per (shape, minval, maxval, dtype), independent.

  Stateless: the [2] seed is split into one seed per draw. Stateful: op seeds
  seed, seed + 1, ... (ops sharing an op seed would draw the same numbers).
  """
  draws = []
  if stateless_seed is not None:
    seeds = tf.random.experimental.stateless_split(
        tf.cast(stateless_seed, tf.int64), num=len(shapes_and_ranges))
    for index, (shape, minval, maxval, dtype) in enumerate(shapes_and_ranges):
      draws.append(tf.random.stateless_uniform(
          shape, seed=seeds[index], minval=minval, maxval=maxval,
          dtype=dtype))
    return draws
  for index, (shape, minval, maxval, dtype) in enumerate(shapes_and_ranges):
    op_seed = None if seed is None else seed + index
    draws.append(tf.compat.v1.random.uniform(
        shape, minval=minval, maxval=maxval, dtype=dtype, seed=op_seed))
  return draws


def mask_items(itemseq, item_size, masked_lm_prob=0.3,
               max_predictions_per_seq=30, seed=None, stateless_seed=None):
  """Masks a batch of item sequences for GRec pretraining.

  Args:
    itemseq: int Tensor [batch_size, seq_length]; seq_length must be static.
    item_size: Python int, the item vocabulary size (random replacements are
      drawn from [0, item_size)).
    masked_lm_prob: fraction of positions to predict.
    max_predictions_per_seq: upper bound on the predicted positions.
    seed: optional Python int, op-level seed of stateful random ops.
    stateless_seed: optional int Tensor [2]; stateless ops, deterministic for a
      given seed (e.g. inside a parallel `Dataset.map`). Wins over `seed`.

  Returns:
    (masked_itemseq, masked_positions, masked_labels):
      masked_itemseq: int32 [batch_size, seq_length], the input with the
        chosen positions replaced;
      masked_positions: int32 [batch_size, num_to_predict], increasing;
      masked_labels: int32 [batch_size, num_to_predict], the original items
        at those positions.
  """
  itemseq = tf.cast(tf.convert_to_tensor(itemseq), tf.int32)
  batch_size, seq_length = layers.get_shape_list(itemseq, expected_rank=2,
                                                 name="itemseq")
  if not isinstance(seq_length, int):
    raise ValueError("mask_items needs a static sequence length, got shape %s"
                     % itemseq.shape)
  k = num_to_predict(seq_length, masked_lm_prob, max_predictions_per_seq)
  noise, action, random_items = _uniform_draws([
      ([batch_size, seq_length], 0.0, 1.0, tf.float32),
      ([batch_size, k], 0.0, 1.0, tf.float32),
      ([batch_size, k], 0, item_size, tf.int32),
  ], seed, stateless_seed)
  # A uniformly random k-subset of the positions: the top k of iid noise.
  _, positions = tf.math.top_k(noise, k=k, sorted=False)
  positions = tf.sort(positions, axis=1)
  labels = tf.gather(itemseq, positions, axis=1, batch_dims=1)
  # One uniform decides 80% mask / 10% keep / 10% random, as the original's
  # rng.random() < 0.8, then rng.random() < 0.5.
  replacement = tf.where(
      action < MASK_PROBABILITY, tf.fill(tf.shape(labels), MASK_ID),
      tf.where(action < MASK_PROBABILITY + KEEP_PROBABILITY, labels,
               random_items))
  # Scatter the k replacements into their rows (positions are distinct).
  one_hot = tf.one_hot(positions, seq_length, dtype=tf.int32)  # [B, k, T]
  chosen = tf.reduce_max(one_hot, axis=1) > 0                   # [B, T]
  values = tf.reduce_sum(one_hot * tf.expand_dims(replacement, 2), axis=1)
  masked_itemseq = tf.where(chosen, values, itemseq)
  return masked_itemseq, positions, labels
