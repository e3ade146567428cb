"""Ranking metric ops against hand-computed values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ops import metrics


def _eval(fn, *args):
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    return sess.run(fn(*[tf.constant(a) for a in args]))


def _metrics(scores, positive_index, k):
  def build(scores, positive_index):
    rank = metrics.rank_of_positive(scores, positive_index)
    values = metrics.per_example_ranking_metrics(rank, k)
    values["rank"] = rank
    return values
  return _eval(build, np.array(scores, np.float32),
               np.array(positive_index, np.int32))


def test_hand_computed_ranks_and_metrics():
  scores = [
      [0.1, 0.9, 0.3, 0.8],   # positive (col 3, 0.8) is second  -> rank 1
      [0.5, 0.1, 0.2, 0.9],   # positive first                  -> rank 0
      [0.9, 0.8, 0.7, 0.1],   # positive last: outside top 2    -> rank 3
  ]
  got = _metrics(scores, [3, 3, 3], k=2)
  np.testing.assert_array_equal(got["rank"], [1, 0, 3])
  np.testing.assert_allclose(got["hr@2"], [1, 1, 0])
  np.testing.assert_allclose(got["mrr@2"], [0.5, 1.0, 0.0])
  np.testing.assert_allclose(got["ndcg@2"], [1 / math.log2(3), 1.0, 0.0],
                             rtol=1e-6)


def test_ties_count_against_a_positive_in_the_last_column():
  # tf.nn.top_k puts the lower index first among equal scores; the original
  # appends the positive last, so every duplicate negative beats it.
  scores = [[0.5, 0.5, 0.2, 0.5], [0.2, 0.2, 0.2, 0.2]]
  got = _metrics(scores, [3, 3], k=5)
  np.testing.assert_array_equal(got["rank"], [2, 3])
  np.testing.assert_allclose(got["mrr@5"], [1 / 3, 1 / 4], rtol=1e-6)


def test_ties_in_full_ranking_follow_the_item_id():
  scores = [[0.3, 0.7, 0.7, 0.7]]
  got = _metrics(scores, [2], k=5)
  np.testing.assert_array_equal(got["rank"], [1])  # item 1 ties and comes first


def test_rank_agrees_with_top_k():
  rng = np.random.default_rng(0)
  # Rounded scores force many ties.
  scores = np.round(rng.normal(size=(50, 100)), 1).astype(np.float32)
  positive = rng.integers(0, 100, size=50).astype(np.int32)
  got = _metrics(scores, positive, k=5)
  top5 = _eval(lambda s: tf.nn.top_k(s, k=5).indices, scores)
  for row in range(50):
    in_top = positive[row] in top5[row]
    assert got["hr@5"][row] == float(in_top)
    if in_top:
      position = list(top5[row]).index(positive[row])
      assert got["rank"][row] == position
      assert got["mrr@5"][row] == pytest.approx(1 / (position + 1))


def test_k_equals_one_and_scalar_positive_index():
  scores = np.array([[0.1, 0.4, 0.3], [0.9, 0.1, 0.3]], np.float32)
  got = _eval(lambda s: metrics.per_example_ranking_metrics(
      metrics.rank_of_positive(s, 1), 1), scores)
  np.testing.assert_allclose(got["hr@1"], [1, 0])
  np.testing.assert_allclose(got["mrr@1"], [1, 0])
  np.testing.assert_allclose(got["ndcg@1"], [1, 0])


def test_accuracy_with_ties_takes_the_lowest_class():
  logits = np.array([[0.2, 0.7, 0.7], [0.9, 0.1, 0.0], [0.5, 0.5, 0.1]],
                    np.float32)
  labels = np.array([2, 0, 0], np.int32)
  got = _eval(metrics.accuracy, logits, labels)
  np.testing.assert_allclose(got, [0, 1, 1])


def test_mean_metric_ops_stream_over_batches_with_weights():
  with tf.Graph().as_default():
    values = tf.compat.v1.placeholder(tf.float32, [None])
    weights = tf.compat.v1.placeholder(tf.float32, [None])
    ops = metrics.mean_metric_ops({"hr@5": values}, weights)
    value_op, update_op = ops["hr@5"]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.local_variables_initializer())
      sess.run(update_op, {values: [1, 0, 1], weights: [1, 1, 1]})
      sess.run(update_op, {values: [1, 1], weights: [1, 0]})
      assert sess.run(value_op) == pytest.approx(3 / 4)
