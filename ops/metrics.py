"""Ranking metrics as in-graph ops.

The rank of the positive follows `tf.nn.top_k`, which the original used: among
equal scores the lower index comes first. So the rank is the number of
candidates scoring strictly higher, plus those scoring the same at a lower
index. With the sampled protocol the positive sits last (index 99), so every
tie counts against it, exactly as in the original.
"""
import tensorflow as tf


def rank_of_positive(scores, positive_index):
  """0-based rank of the positive among the candidates.

  Args:
    scores: float32 Tensor [batch_size, num_candidates].
    positive_index: int Tensor [batch_size] (or a Python int for all rows),
      the column of the positive.

  Returns:
    int32 Tensor [batch_size].
  """
  num_candidates = tf.shape(scores)[1]
  positive_index = tf.cast(positive_index, tf.int32)
  if positive_index.shape.ndims == 0:
    positive_index = tf.fill([tf.shape(scores)[0]], positive_index)
  positive_scores = tf.gather(scores, positive_index, axis=1, batch_dims=1)
  positive_scores = tf.expand_dims(positive_scores, 1)
  columns = tf.expand_dims(tf.range(num_candidates), 0)
  ahead = tf.logical_or(
      scores > positive_scores,
      tf.logical_and(tf.equal(scores, positive_scores),
                     columns < tf.expand_dims(positive_index, 1)))
  return tf.reduce_sum(tf.cast(ahead, tf.int32), axis=1)


def hit_at_k(rank, k):
  """1.0 where the positive is in the top k, else 0.0: float32 [batch_size]."""
  return tf.cast(rank < k, tf.float32)


def mrr_at_k(rank, k):
  """1 / (rank + 1) inside the top k, else 0: float32 [batch_size]."""
  reciprocal = 1.0 / tf.cast(rank + 1, tf.float32)
  return tf.where(rank < k, reciprocal, tf.zeros_like(reciprocal))


def ndcg_at_k(rank, k):
  """1 / log2(rank + 2) inside the top k, else 0: float32 [batch_size]."""
  gain = tf.math.log(2.0) / tf.math.log(tf.cast(rank, tf.float32) + 2.0)
  return tf.where(rank < k, gain, tf.zeros_like(gain))


def per_example_ranking_metrics(rank, k):
  """Per-example MRR@k, HR@k and NDCG@k, keyed by their display names.

  Args:
    rank: int32 Tensor [batch_size] from rank_of_positive.
    k: int cut-off.

  Returns:
    dict {"mrr@k": float32 [batch_size], "hr@k": ..., "ndcg@k": ...}.
  """
  return {
      "mrr@%d" % k: mrr_at_k(rank, k),
      "hr@%d" % k: hit_at_k(rank, k),
      "ndcg@%d" % k: ndcg_at_k(rank, k),
  }


def accuracy(logits, labels):
  """Top-1 accuracy per example (ties resolved as top_k: lowest index).

  Args:
    logits: float32 [batch_size, num_classes]; labels: int [batch_size].

  Returns:
    float32 Tensor [batch_size] of 0.0/1.0.
  """
  return hit_at_k(rank_of_positive(logits, labels), 1)


def mean_metric_ops(per_example, weights=None):
  """Estimator eval metric ops: the streaming mean of each per-example metric.

  Args:
    per_example: dict {name: float32 [batch_size]}.
    weights: optional float32 [batch_size] (0 for padding rows).

  Returns:
    dict {name: (value_op, update_op)}.
  """
  return {
      name: tf.compat.v1.metrics.mean(values, weights=weights)
      for name, values in per_example.items()
  }
