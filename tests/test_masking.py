"""ops/masking.py: GRec's 80/10/10 masked item prediction, in the graph."""
import numpy as np
import pytest
import tensorflow as tf

from ops import masking


def _run(itemseq, item_size, seed=None, stateless_seed=None, **options):
  with tf.Graph().as_default():
    stateless = (None if stateless_seed is None else
                 tf.constant(stateless_seed, tf.int64))
    outputs = masking.mask_items(tf.constant(itemseq, tf.int32), item_size,
                                 seed=seed, stateless_seed=stateless,
                                 **options)
    with tf.compat.v1.Session() as session:
      return session.run(outputs)


@pytest.mark.parametrize("value, expected", [
    (0.0, 0), (2.4, 2), (2.5, 3), (2.7, 3), (4.5, 5), (5.5, 6)])
def test_python2_round(value, expected):
  assert masking.python2_round(value) == expected


@pytest.mark.parametrize("seq_length, expected", [
    (1, 1), (2, 1), (5, 2), (9, 3), (15, 5), (50, 15), (100, 30), (200, 30)])
def test_num_to_predict(seq_length, expected):
  # min(30, max(1, round(len * 0.3))) with Python 2 rounding (15 * 0.3 = 4.5
  # -> 5, where Python 3's round would give 4).
  assert masking.num_to_predict(seq_length, 0.3, 30) == expected


def test_num_to_predict_rejects_bad_arguments():
  with pytest.raises(ValueError, match="masked_lm_prob"):
    masking.num_to_predict(10, 0.0, 30)
  with pytest.raises(ValueError, match="max_predictions_per_seq"):
    masking.num_to_predict(10, 0.3, 0)


def test_structure_of_one_batch():
  rng = np.random.RandomState(0)
  itemseq = rng.randint(1, 50, size=[64, 20])
  masked, positions, labels = _run(itemseq, 50, stateless_seed=[3, 4])
  k = masking.num_to_predict(20)
  assert masked.shape == (64, 20) and masked.dtype == np.int32
  assert positions.shape == (64, k) and labels.shape == (64, k)
  for row in range(64):
    # Distinct, increasing positions inside the sequence.
    assert np.all(np.diff(positions[row]) > 0)
    assert positions[row].min() >= 0 and positions[row].max() < 20
    np.testing.assert_array_equal(labels[row], itemseq[row][positions[row]])
    untouched = np.setdiff1d(np.arange(20), positions[row])
    np.testing.assert_array_equal(masked[row][untouched],
                                  itemseq[row][untouched])
  assert masked.min() >= 0 and masked.max() < 50


def test_statistics_80_10_10_and_uniform_positions():
  # 20,000 rows x 3 predictions = 60,000 masked positions.
  num_rows, length, item_size = 20000, 10, 1000
  itemseq = np.tile(np.arange(1, length + 1), [num_rows, 1])
  masked, positions, labels = _run(itemseq, item_size, stateless_seed=[7, 8])
  new_values = np.take_along_axis(masked, positions, axis=1)
  total = new_values.size
  masked_fraction = np.mean(new_values == 0)
  kept_fraction = np.mean(new_values == labels)
  # Random replacements hit the label (or 0) with probability 1/1000 only.
  random_fraction = 1.0 - masked_fraction - kept_fraction
  sigma = np.sqrt(0.1 * 0.9 / total)
  assert abs(masked_fraction - 0.8) < 5 * np.sqrt(0.16 / total) + 1e-3
  assert abs(kept_fraction - 0.1) < 5 * sigma + 1e-3
  assert abs(random_fraction - 0.1) < 5 * sigma + 1e-3
  # Random replacements are spread over [0, item_size).
  replaced = new_values[(new_values != 0) & (new_values != labels)]
  assert replaced.min() >= 0 and replaced.max() < item_size
  assert abs(replaced.mean() - (item_size - 1) / 2.0) < 0.05 * item_size
  # Each position is chosen with probability k / length = 0.3.
  counts = np.bincount(positions.ravel(), minlength=length) / float(num_rows)
  np.testing.assert_allclose(counts, 0.3, atol=0.015)


def test_stateless_seed_is_deterministic_and_seeds_differ():
  itemseq = np.arange(1, 31).reshape([3, 10])
  first = _run(itemseq, 40, stateless_seed=[1, 2])
  again = _run(itemseq, 40, stateless_seed=[1, 2])
  other = _run(itemseq, 40, stateless_seed=[1, 3])
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_op_seed_is_deterministic():
  itemseq = np.arange(1, 31).reshape([3, 10])
  first = _run(itemseq, 40, seed=5)
  again = _run(itemseq, 40, seed=5)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


def test_max_predictions_caps_and_dynamic_batch():
  with tf.Graph().as_default():
    itemseq = tf.compat.v1.placeholder(tf.int32, [None, 200])
    masked, positions, labels = masking.mask_items(
        itemseq, 10, masked_lm_prob=0.3, max_predictions_per_seq=7, seed=1)
    assert positions.shape.as_list() == [None, 7]
    with tf.compat.v1.Session() as session:
      out = session.run([masked, positions, labels],
                        {itemseq: np.ones([2, 200], np.int32)})
  assert out[1].shape == (2, 7)


def test_needs_static_length():
  with tf.Graph().as_default():
    itemseq = tf.compat.v1.placeholder(tf.int32, [None, None])
    with pytest.raises(ValueError, match="static sequence length"):
      masking.mask_items(itemseq, 10)
