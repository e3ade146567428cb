"""In-graph negative samplers for PeterRec fine-tuning.

The original fine-tuning scripts draw negatives in Python for every batch
(`random_neq` for the BCE loss, `np.random.choice(..., p=dl.prob)` for the
LambdaFM/BPR variant) and feed them through `feed_dict`. These functions do
the same inside the graph, so a `tf.data` pipeline can attach negatives to
each batch and no Python runs per step.

Every sampler takes either an op-level `seed` (stateful random ops, as in
`tf.compat.v1.random.uniform`) or a `stateless_seed` (an int32/int64 Tensor
of shape [2]; stateless ops, deterministic for a given seed even inside a
parallel `Dataset.map`). When `stateless_seed` is given, `seed` is ignored.

Target ids live in [0, vocab_size); id 0 is `<UNK>`/padding and is never
sampled. Positives must be real targets, i.e. in [1, vocab_size).
"""
import numpy as np
import tensorflow as tf


def _batch_size(positives):
  """Returns the (possibly dynamic) batch size of a rank-1 Tensor."""
  positives.shape.assert_has_rank(1)
  return tf.compat.v1.shape(positives)[0]


def _uniform(shape, minval, maxval, dtype, seed, stateless_seed):
  """Uniform draws in [minval, maxval), stateful or stateless."""
  if stateless_seed is not None:
    return tf.compat.v1.random.stateless_uniform(
        shape, seed=stateless_seed, minval=minval, maxval=maxval, dtype=dtype)
  return tf.compat.v1.random.uniform(
      shape, minval=minval, maxval=maxval, dtype=dtype, seed=seed)


def _categorical(logits, num_samples, seed, stateless_seed):
  """int32 [rows, num_samples] draws from `logits` [rows, num_classes]."""
  if stateless_seed is not None:
    return tf.compat.v1.random.stateless_categorical(
        logits, num_samples, seed=stateless_seed, dtype=tf.int32)
  return tf.compat.v1.random.categorical(
      logits, num_samples, dtype=tf.int32, seed=seed)


def uniform_negatives(positives, num_negatives, vocab_size, distinct=False,
                      seed=None, stateless_seed=None):
  """Draws negatives uniformly from [1, vocab_size) without the positive.

  This is the original's `random_neq(1, target_size, positive)` (training,
  one negative) and `random_negs(1, target_size, 99, positive)` (sampled
  evaluation, with replacement), done exactly and without a rejection loop:
  draw from the vocab_size - 2 allowed ids numbered 1..vocab_size-2, then
  add 1 to every draw >= the positive. That maps [1, vocab_size - 1)
  one-to-one onto [1, vocab_size) minus {positive}, so each allowed id has
  probability 1 / (vocab_size - 2).

  Args:
    positives: int32 Tensor of shape [batch_size], ids in [1, vocab_size).
    num_negatives: Python int >= 0, negatives per row.
    vocab_size: Python int, the target vocabulary size including id 0.
      Must be >= 3 (at least two real targets).
    distinct: if True, the negatives of a row are drawn without replacement
      (needs num_negatives <= vocab_size - 2). Costs O(batch * vocab_size).
    seed: optional Python int, op-level seed of the stateful random op.
    stateless_seed: optional int Tensor of shape [2]; use stateless ops.

  Returns:
    int32 Tensor of shape [batch_size, num_negatives]; never 0, never the
    row's positive.
  """
  if vocab_size < 3:
    raise ValueError("uniform_negatives needs vocab_size >= 3 (id 0 plus at "
                     "least two real targets), got %d" % vocab_size)
  if num_negatives < 0:
    raise ValueError("num_negatives must be >= 0, got %d" % num_negatives)
  if distinct and num_negatives > vocab_size - 2:
    raise ValueError("distinct=True needs num_negatives <= vocab_size - 2 = "
                     "%d, got %d" % (vocab_size - 2, num_negatives))
  positives = tf.cast(positives, tf.int32)
  batch_size = _batch_size(positives)
  if num_negatives == 0:
    return tf.zeros(tf.stack([batch_size, 0]), dtype=tf.int32)
  if distinct:
    # A uniformly random subset of size k: the top-k positions of iid noise.
    noise = _uniform(tf.stack([batch_size, vocab_size - 2]), 0.0, 1.0,
                     tf.float32, seed, stateless_seed)
    _, indices = tf.math.top_k(noise, k=num_negatives, sorted=False)
    draws = indices + 1  # [batch, k] in [1, vocab_size - 1)
  else:
    draws = _uniform(tf.stack([batch_size, num_negatives]), 1, vocab_size - 1,
                     tf.int32, seed, stateless_seed)
  # Skip over the positive: ids >= positive move up by one.
  shift = tf.cast(
      tf.greater_equal(draws, tf.expand_dims(positives, 1)), tf.int32)
  return draws + shift


def lambdafm_rank_order(target_frequencies):
  """Target ids ordered by rank: most frequent first, ties by smaller id.

  Ids with frequency 0 (and id 0) are left out: the original builds its
  distribution only from ids that occur as targets.

  Args:
    target_frequencies: sequence of ints of length target_vocab_size,
      entry i is how often target id i is a positive (entry 0 is ignored).

  Returns:
    int64 numpy array [num_ranked] of target ids, rank 0 first.
  """
  freq = np.asarray(target_frequencies, dtype=np.int64)
  if freq.ndim != 1 or freq.shape[0] < 2:
    raise ValueError("target_frequencies must be a list of length "
                     "target_vocab_size >= 2, got shape %s" % (freq.shape,))
  if np.any(freq < 0):
    raise ValueError("target_frequencies must be >= 0")
  ids = np.arange(1, freq.shape[0])
  ids = ids[freq[1:] > 0]
  # np.lexsort sorts by the last key first: descending frequency, then id.
  # Ties by ascending id are what the original's stable sort gives, since its
  # frequency dict is filled in order of first appearance = id order.
  return ids[np.lexsort((ids, -freq[ids]))]


def lambdafm_probabilities(target_frequencies, rho=0.3):
  """The LambdaFM static sampling distribution over target ids.

  p(id) is proportional to exp(-(rank(id) + 1) / (rho * target_vocab_size))
  where rank 0 is the most frequent target (see `lambdafm_rank_order`), and
  target_vocab_size = len(target_frequencies) includes id 0 (the original's
  `len(target_dict)`). Id 0 and ids that never occur get probability 0.

  This is the *intended* distribution: the original reads its probabilities
  from a dict's values in rank order but then treats entry k as id k + 1
  (docs/DEVIATIONS.md), which samples the wrong ids.

  Args:
    target_frequencies: sequence of ints, length target_vocab_size.
    rho: float > 0, the LambdaFM temperature (default 0.3 as the original).

  Returns:
    float64 numpy array [target_vocab_size] summing to 1.
  """
  if rho <= 0:
    raise ValueError("rho must be > 0, got %r" % (rho,))
  vocab_size = len(target_frequencies)
  order = lambdafm_rank_order(target_frequencies)
  if order.size == 0:
    raise ValueError("target_frequencies has no target with frequency > 0")
  probs = np.zeros([vocab_size], dtype=np.float64)
  ranks = np.arange(order.size, dtype=np.float64)
  probs[order] = np.exp(-(ranks + 1.0) / (rho * vocab_size))
  return probs / probs.sum()


def lambdafm_negatives(positives, num_negatives, target_frequencies, rho=0.3,
                       seed=None, exclude_positive=False,
                       stateless_seed=None):
  """Draws negatives from the LambdaFM static rank-based distribution.

  The original (`PeterRec_cau_serial_lambdafm.py`) draws
  `np.random.choice(num_targets, p=prob) + 1` and does NOT exclude the
  positive, so a popular positive is sometimes its own negative (the BPR
  term is then log(sigmoid(0)) with zero gradient). That is the default
  here; `exclude_positive=True` renormalises each row's distribution
  without its positive.

  Args:
    positives: int32 Tensor of shape [batch_size], ids in [1, vocab_size).
    num_negatives: Python int >= 0.
    target_frequencies: sequence of ints, length target_vocab_size (see
      `lambdafm_probabilities`); a Python/numpy constant baked into the graph.
    rho: float, the LambdaFM temperature.
    seed: optional Python int, op-level seed.
    exclude_positive: if True, never return the row's positive.
    stateless_seed: optional int Tensor of shape [2]; use stateless ops.

  Returns:
    int32 Tensor of shape [batch_size, num_negatives], ids with p > 0.
  """
  if num_negatives < 0:
    raise ValueError("num_negatives must be >= 0, got %d" % num_negatives)
  probs = lambdafm_probabilities(target_frequencies, rho)
  if exclude_positive and np.count_nonzero(probs) < 2:
    raise ValueError("exclude_positive=True needs at least two targets with "
                     "frequency > 0")
  vocab_size = probs.shape[0]
  with np.errstate(divide="ignore"):
    log_probs = np.where(probs > 0, np.log(probs), -np.inf).astype(np.float32)
  positives = tf.cast(positives, tf.int32)
  batch_size = _batch_size(positives)
  if num_negatives == 0:
    return tf.zeros(tf.stack([batch_size, 0]), dtype=tf.int32)
  logits = tf.constant(log_probs, dtype=tf.float32, shape=[1, vocab_size],
                       name="lambdafm_log_probs")
  if not exclude_positive:
    # One row of logits, batch * k draws, reshaped to [batch, k].
    draws = _categorical(logits, batch_size * num_negatives, seed,
                         stateless_seed)
    return tf.reshape(draws, tf.stack([batch_size, num_negatives]))
  row_logits = tf.tile(logits, tf.stack([batch_size, 1]))  # [batch, vocab]
  is_positive = tf.cast(tf.one_hot(positives, vocab_size), tf.bool)
  row_logits = tf.compat.v1.where(
      is_positive, tf.fill(tf.shape(row_logits), -np.inf), row_logits)
  return _categorical(row_logits, num_negatives, seed, stateless_seed)
