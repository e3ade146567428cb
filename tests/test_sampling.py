"""Tests of the in-graph negative samplers (ops/sampling.py)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ops import sampling


def chi_square_critical(df, z=3.29):
  """Upper critical value of chi-square(df) at about p = 0.0005.

  Wilson-Hilferty approximation (no scipy in the environment).
  """
  a = 2.0 / (9.0 * df)
  return df * (1.0 - a + z * math.sqrt(a))**3


def chi_square(counts, probs):
  counts = np.asarray(counts, np.float64)
  expected = counts.sum() * np.asarray(probs, np.float64)
  keep = expected > 0
  assert counts[~keep].sum() == 0, "drew an id of probability 0"
  return float(((counts[keep] - expected[keep])**2 / expected[keep]).sum())


def test_uniform_never_returns_positive_or_zero_and_is_uniform():
  vocab_size = 7
  positives = tf.constant([1, 2, 3, 4, 5, 6], tf.int32)
  draws = sampling.uniform_negatives(positives, 3000, vocab_size,
                                     seed=1).numpy()
  assert draws.shape == (6, 3000)
  assert draws.dtype == np.int32
  for row, positive in enumerate(range(1, 7)):
    assert draws[row].min() >= 1 and draws[row].max() < vocab_size
    assert not np.any(draws[row] == positive)
    counts = np.bincount(draws[row], minlength=vocab_size)
    probs = np.full([vocab_size], 1.0 / (vocab_size - 2))
    probs[[0, positive]] = 0.0
    assert chi_square(counts, probs) < chi_square_critical(vocab_size - 3)


def test_uniform_with_three_ids_always_returns_the_other_one():
  draws = sampling.uniform_negatives(tf.constant([1, 2, 2, 1]), 50, 3,
                                     seed=3).numpy()
  np.testing.assert_array_equal(draws[:, 0], [2, 1, 1, 2])
  assert np.all(draws == draws[:, :1])


def test_uniform_distinct_draws_without_replacement():
  vocab_size = 12
  positives = tf.constant([1, 5, 11, 7], tf.int32)
  draws = sampling.uniform_negatives(positives, 6, vocab_size, distinct=True,
                                     seed=2).numpy()
  for row, positive in zip(draws, [1, 5, 11, 7]):
    assert len(set(row.tolist())) == 6
    assert positive not in row and 0 not in row and row.max() < vocab_size
  # Asking for every other id returns exactly them.
  full = sampling.uniform_negatives(positives, vocab_size - 2, vocab_size,
                                    distinct=True, seed=2).numpy()
  for row, positive in zip(full, [1, 5, 11, 7]):
    assert sorted(row.tolist()) == [i for i in range(1, vocab_size)
                                    if i != positive]


def test_uniform_stateless_seed_is_deterministic_and_zero_negatives():
  positives = tf.constant([3, 4, 5], tf.int32)
  seed = tf.constant([7, 11], tf.int64)
  a = sampling.uniform_negatives(positives, 5, 20, stateless_seed=seed)
  b = sampling.uniform_negatives(positives, 5, 20, stateless_seed=seed)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  empty = sampling.uniform_negatives(positives, 0, 20)
  assert empty.shape == (3, 0) and empty.dtype == tf.int32


def test_uniform_rejects_bad_arguments():
  with pytest.raises(ValueError, match="vocab_size >= 3"):
    sampling.uniform_negatives(tf.constant([1]), 1, 2)
  with pytest.raises(ValueError, match="num_negatives <= vocab_size - 2"):
    sampling.uniform_negatives(tf.constant([1]), 5, 6, distinct=True)


def test_uniform_in_graph_mode_with_dynamic_batch():
  with tf.Graph().as_default():
    positives = tf.compat.v1.placeholder(tf.int32, [None])
    negatives = sampling.uniform_negatives(positives, 4, 10, seed=5)
    assert negatives.shape.as_list() == [None, 4]
    with tf.compat.v1.Session() as sess:
      out = sess.run(negatives, {positives: [9, 1]})
  assert out.shape == (2, 4)
  assert 9 not in out[0] and 1 not in out[1] and 0 not in out


def test_lambdafm_probabilities_follow_rank_formula():
  # ids:         0  1  2  3  4  5
  frequencies = [0, 1, 5, 3, 0, 5]
  # Rank: id 2 and id 5 (5 times; tie -> smaller id first), id 3, id 1.
  np.testing.assert_array_equal(sampling.lambdafm_rank_order(frequencies),
                                [2, 5, 3, 1])
  rho, size = 0.3, 6
  weights = {2: math.exp(-1 / (rho * size)), 5: math.exp(-2 / (rho * size)),
             3: math.exp(-3 / (rho * size)), 1: math.exp(-4 / (rho * size))}
  total = sum(weights.values())
  expected = [0.0] + [weights.get(i, 0.0) / total for i in range(1, 6)]
  np.testing.assert_allclose(sampling.lambdafm_probabilities(frequencies, rho),
                             expected, rtol=1e-12)
  # The original's naive mapping (entry k -> id k + 1) would give id 1, the
  # least frequent target, the largest probability; ours gives it to id 2.
  probs = sampling.lambdafm_probabilities(frequencies, rho)
  assert np.argmax(probs) == 2 and probs[1] == min(p for p in probs if p > 0)


def test_lambdafm_empirical_frequencies_match_distribution():
  frequencies = [0, 2, 9, 4, 1, 7, 3, 0, 5]
  probs = sampling.lambdafm_probabilities(frequencies, rho=0.3)
  positives = tf.constant([1, 2, 3, 4], tf.int32)
  draws = sampling.lambdafm_negatives(positives, 5000, frequencies, rho=0.3,
                                      seed=4).numpy()
  assert draws.shape == (4, 5000) and draws.dtype == np.int32
  counts = np.bincount(draws.reshape([-1]), minlength=len(frequencies))
  assert counts[0] == 0 and counts[7] == 0  # never id 0 nor unseen ids
  df = np.count_nonzero(probs) - 1
  assert chi_square(counts, probs) < chi_square_critical(df)
  # Default (as the original): the positive itself can be drawn.
  assert np.any(draws[1] == 2)


def test_lambdafm_exclude_positive_renormalises_without_it():
  frequencies = [0, 2, 9, 4, 1, 7]
  probs = sampling.lambdafm_probabilities(frequencies, rho=0.3)
  positives = tf.constant([2, 5], tf.int32)
  draws = sampling.lambdafm_negatives(
      positives, 6000, frequencies, exclude_positive=True,
      stateless_seed=tf.constant([1, 2], tf.int64)).numpy()
  for row, positive in zip(draws, [2, 5]):
    assert positive not in row and 0 not in row
    expected = probs.copy()
    expected[positive] = 0.0
    expected /= expected.sum()
    counts = np.bincount(row, minlength=len(frequencies))
    assert chi_square(counts, expected) < chi_square_critical(3)


def test_lambdafm_zero_negatives_and_errors():
  out = sampling.lambdafm_negatives(tf.constant([1, 1]), 0, [0, 3, 1])
  assert out.shape == (2, 0)
  with pytest.raises(ValueError, match="at least two targets"):
    sampling.lambdafm_negatives(tf.constant([1]), 1, [0, 3, 0],
                                exclude_positive=True)
  with pytest.raises(ValueError, match="no target with frequency"):
    sampling.lambdafm_probabilities([0, 0, 0])
