"""User-disjoint splits, the validation carve and the few-label switch."""
import numpy as np
import pytest

import data_loader
from tfrecord_tools import convert_csv


def _users(rows_per_user):
  """User ids [num_rows]: user u has rows_per_user[u] rows, in line order."""
  return np.repeat(np.arange(len(rows_per_user)), rows_per_user)


def test_split_by_user_shares_no_user_and_keeps_every_row():
  users = _users([3, 1, 2, 5, 1, 1, 4, 2, 2, 3])
  train, test = data_loader.split_train_test_by_user(users, 0.3, seed=10)
  assert sorted(np.concatenate([train, test]).tolist()) == list(
      range(len(users)))
  assert not set(users[train]) & set(users[test])
  assert len(set(users[test])) == 3  # int(0.3 * 10) users
  # Seeded: the same split again, a different one with another seed.
  again = data_loader.split_train_test_by_user(users, 0.3, seed=10)
  np.testing.assert_array_equal(test, again[1])
  other = data_loader.split_train_test_by_user(users, 0.3, seed=11)
  assert set(users[other[1]]) != set(users[test])


def test_carve_by_user_is_disjoint_and_seeded():
  users = _users([2] * 50)
  train, validation = data_loader.carve_training_rows(
      users, validation_fraction=0.2, by="user", seed=3)
  assert not (train & validation).any()
  assert (train | validation).all()
  assert len(set(users[validation])) == 10
  assert not set(users[validation]) & set(users[train])


def test_carve_by_row_holds_out_rows():
  users = _users([4] * 10)
  train, validation = data_loader.carve_training_rows(
      users, validation_fraction=0.25, by="row", seed=3)
  assert validation.sum() == 10 and train.sum() == 30
  assert not (train & validation).any()


@pytest.mark.parametrize("labelled", [{"labelled_fraction": 0.25},
                                      {"num_labelled_users": 7}])
def test_few_labels_keep_exactly_the_asked_users_and_never_validation(
    labelled):
  users = _users([1, 2, 3] * 20)  # 60 users, 120 rows
  _, full_validation = data_loader.carve_training_rows(
      users, validation_fraction=0.1, seed=5)
  train, validation = data_loader.carve_training_rows(
      users, validation_fraction=0.1, seed=5, labelled_seed=9, **labelled)
  np.testing.assert_array_equal(validation, full_validation)
  expected = labelled.get("num_labelled_users") or int(round(0.25 * 54))
  kept_users = set(users[train])
  assert len(kept_users) == expected
  # Every row of a kept user trains; nobody else does.
  np.testing.assert_array_equal(train, np.isin(users, list(kept_users)))
  assert not kept_users & set(users[validation])
  # Another labelled seed draws other users, same validation.
  train2, validation2 = data_loader.carve_training_rows(
      users, validation_fraction=0.1, seed=5, labelled_seed=10, **labelled)
  np.testing.assert_array_equal(validation2, validation)
  assert set(users[train2]) != kept_users


def test_carve_rejects_impossible_requests():
  users = _users([1] * 10)
  with pytest.raises(ValueError, match="num_labelled_users"):
    data_loader.carve_training_rows(users, 0.2, num_labelled_users=9)
  with pytest.raises(ValueError, match="validation_fraction"):
    data_loader.carve_training_rows(users, 1.0)
  with pytest.raises(ValueError, match="labelled_fraction"):
    data_loader.carve_training_rows(users, 0.1, labelled_fraction=0.0)


@pytest.mark.parametrize("split_by", ["row", "user"])
def test_converter_records_users_and_splits_by_user(tmp_path, split_by):
  rng = np.random.RandomState(0)
  sources = [[str(i) for i in rng.randint(1, 30, size=6)] for _ in range(40)]
  targets = [["t%d" % t for t in rng.choice(8, size=1 + u % 3, replace=False)]
             for u in range(40)]
  metadata = convert_csv.make_finetune_dataset(
      str(tmp_path), sources, targets, test_fraction=0.25, split_by=split_by)
  metadata = data_loader.load_metadata(str(tmp_path))
  assert metadata["split_by"] == split_by
  train_users = data_loader.read_finetune_users(metadata["paths"]["train"])
  test_users = data_loader.read_finetune_users(metadata["paths"]["test"])
  assert len(train_users) == metadata["num_train"]
  assert len(test_users) == metadata["num_test"]
  counts = np.bincount(np.concatenate([train_users, test_users]))
  np.testing.assert_array_equal(counts, [len(t) for t in targets])
  shared = set(train_users) & set(test_users)
  if split_by == "user":
    assert not shared
    assert metadata["num_test_users"] == 10  # int(0.25 * 40)
  else:
    assert shared  # The original's row split puts users on both sides.


def test_input_pipeline_reads_only_the_masked_rows(tmp_path):
  sources = [[str(i), str(i + 1)] for i in range(1, 13)]
  targets = [["t%d" % i] for i in range(12)]
  metadata = convert_csv.make_finetune_dataset(
      str(tmp_path), sources, targets, test_fraction=0.0)
  path = data_loader.load_metadata(str(tmp_path))["paths"]["train"]
  users = data_loader.read_finetune_users(path)
  mask = users % 3 == 0
  input_fn = data_loader.finetune_input_fn_builder(
      path, metadata["source_length"], True, batch_size=5, is_training=False,
      target_vocab_size=metadata["target_vocab_size"], num_negatives=1,
      row_mask=mask)
  seen = np.concatenate([b["target"]
                         for b in input_fn({}).as_numpy_iterator()])
  # Target "t<u>" of user u has id u + 1 (first appearance).
  np.testing.assert_array_equal(np.sort(seen), np.sort(users[mask] + 1))


def test_cls_at_start_sees_no_item_of_the_user():
  import tensorflow as tf
  from ops import modeling
  from ops import networks
  config = modeling.ModelConfig(item_size=20, channels=8, dilations=[1, 2],
                                kernel_size=3, causal=True)
  source = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], dtype=np.int32)
  vectors = {}
  for at_start in (False, True):
    with tf.Graph().as_default():
      tf.compat.v1.set_random_seed(1)
      rows = data_loader.finetune_rows(tf.constant(source),
                                       tf.constant([1, 2]), True, at_start)
      user, _ = networks.peterrec_user_vectors(rows[:, :-1], config, "serial",
                                               cls_at_start=at_start)
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        vectors[at_start], row_values = session.run([user, rows])
    if at_start:
      np.testing.assert_array_equal(row_values[:, 0], [0, 0])
      np.testing.assert_array_equal(row_values[:, 1:5], source)
  # At the end the two users differ; at the start they are the same user.
  assert np.abs(vectors[False][0] - vectors[False][1]).max() > 1e-4
  np.testing.assert_allclose(vectors[True][0], vectors[True][1], atol=1e-6)


def test_mean_user_vector_is_the_mean_of_the_hidden_states():
  import tensorflow as tf
  from ops import modeling
  from ops import networks
  config = modeling.ModelConfig(item_size=20, channels=8, dilations=[1, 2],
                                kernel_size=3, causal=True)
  with tf.Graph().as_default():
    rows = tf.constant([[3, 4, 5, 0], [7, 8, 9, 0]])
    user, hidden = networks.peterrec_user_vectors(rows, config, "serial",
                                                  pooling="mean")
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      user, hidden = session.run([user, hidden])
  np.testing.assert_allclose(user, hidden.mean(axis=1), rtol=1e-6)
  with pytest.raises(ValueError, match="pooling"):
    modeling.user_representation(tf.zeros([1, 2, 3]), True, pooling="max")
