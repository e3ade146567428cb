"""Calibration rows: hand-computed metrics and learning on planted data."""
import numpy as np

import baselines
import data_loader
from tfrecord_tools import convert_csv


def test_ranking_metrics_by_hand():
  positive = np.array([0.5, 0.5, 0.1])
  negatives = np.array([[0.1, 0.2, 0.3],   # rank 0
                        [0.5, 0.9, 0.0],   # a tie counts against: rank 2
                        [0.2, 0.3, 0.4]])  # rank 3
  got = baselines.ranking_metrics(positive, negatives, top_k=3)
  assert got["hr@3"] == 2.0 / 3
  assert abs(got["mrr@3"] - (1.0 + 1.0 / 3) / 3) < 1e-12
  assert abs(got["ndcg@3"] - (1.0 + 1.0 / np.log2(4)) / 3) < 1e-12


def test_reference_is_majority_and_popularity():
  train_targets = np.array([2, 2, 3, 1, 2])
  test = {"targets": np.array([2, 3, 2]),
          "negatives": np.array([[1, 3], [2, 1], [3, 1]])}
  assert baselines.user_independent_reference(
      train_targets, test, 4, True) == {"accuracy": 2.0 / 3}
  # Popularity 2 > 1 = 3: ranks 0, 1 (tie with 1 counts against), 0.
  got = baselines.user_independent_reference(train_targets, test, 4, False,
                                             top_k=1)
  assert got == {"mrr@1": 2.0 / 3, "hr@1": 2.0 / 3, "ndcg@1": 2.0 / 3}


def _planted(tmp_path, classification, num_users=300):
  """Class / target = which of 3 item groups dominates the user's bag."""
  rng = np.random.RandomState(0)
  sources, targets = [], []
  for _ in range(num_users):
    group = rng.randint(3)
    own = rng.randint(0, 10, size=6) + 10 * group
    noise = rng.randint(0, 30, size=3)
    sources.append([str(i + 1) for i in np.concatenate([own, noise])])
    label = "g%d" % group if classification else "t%d" % (
        5 * group + rng.randint(5))
    targets.append([label])
  convert_csv.make_finetune_dataset(str(tmp_path), sources, targets,
                                    test_fraction=0.3, split_by="user")
  metadata = data_loader.load_metadata(str(tmp_path))
  users = data_loader.read_finetune_users(metadata["paths"]["train"])
  train, validation = data_loader.carve_training_rows(users, 0.2)
  return metadata, train, validation


def test_linear_classifier_learns_the_planted_class(tmp_path):
  metadata, train, validation = _planted(tmp_path, True)
  rows = baselines.calibration_rows(metadata, True, train, validation)
  assert rows["reference"]["accuracy"] < 0.5
  assert rows["linear"]["accuracy"] > 0.9, rows
  assert rows["linear_selection"]["l2"] in baselines.DEFAULT_L2_GRID


def test_linear_ranker_beats_popularity_on_planted_targets(tmp_path):
  metadata, train, validation = _planted(tmp_path, False, num_users=600)
  rows = baselines.calibration_rows(metadata, False, train, validation,
                                    num_eval_negatives=10, top_k=3)
  # 15 targets, 10 negatives: popularity is near chance (3/11); the bag
  # tells the group, i.e. 5 of the 15 targets.
  assert rows["linear"]["hr@3"] > rows["reference"]["hr@3"] + 0.2, rows


def test_reference_over_all_targets_by_hand(tmp_path):
  # Targets t1 (3 training rows), t2 (1), t3 (2): test positives t2, t3.
  sources = [["1", "2"]] * 8
  targets = [["t1"], ["t1"], ["t1"], ["t2"], ["t3"], ["t3"], ["t2"], ["t3"]]
  convert_csv.make_finetune_dataset(str(tmp_path), sources, targets,
                                    test_fraction=0.25, split_seed=0)
  metadata = data_loader.load_metadata(str(tmp_path))
  test = baselines.read_split(metadata, "test")
  frequencies = np.array(metadata["train_target_frequencies"])
  # rank = other targets at least as frequent in training
  ranks = [int(np.sum(frequencies[1:] >= frequencies[t]) - 1)
           for t in test["targets"]]
  expected = baselines.metrics_of_ranks(np.array(ranks), top_k=1)
  assert baselines.test_reference(metadata, False, "full", top_k=1) == expected


def test_scatter_add_sums_repeated_ids_like_add_at():
  ids = np.array([3, 0, 3, 3, 1])
  values = np.arange(10, dtype=np.float32).reshape([5, 2])
  expected = np.zeros([5, 2], np.float32)
  np.add.at(expected, ids, values)
  np.testing.assert_array_equal(baselines.scatter_add(5, ids, values),
                                expected)
  np.testing.assert_array_equal(
      baselines.scatter_add(5, ids, values[:, 0]), [2, 8, 0, 10, 0])
