"""Our graphs and the original checkpoints have the same variables.

Both directions: the authors' checkpoints restore into graphs built by ops/
with no unmatched variable, and a checkpoint saved from our graph (with its
Adam optimizer) lists exactly the names and shapes of the original.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from ops import checkpoint as checkpoint_lib
from ops import modeling
from ops import networks
from tests import conftest

DEMO_CONFIG = dict(item_size=175, channels=64, dilations=[1, 4, 1, 4, 1, 4, 1, 4],
                   kernel_size=3)


def _all_stored_shapes(path):
  return {name: list(shape) for name, shape in tf.train.list_variables(path)}


def _build_pretraining_graph(causal):
  """The original pretraining graph: NextItNet + logits, or GRec + softmax."""
  config = modeling.ModelConfig(causal=causal, **DEMO_CONFIG)
  itemseq = tf.compat.v1.placeholder(tf.int32, [None, 10])
  if causal:
    outputs = networks.nextitnet_pretrain(itemseq, config, softmax="full")
  else:
    positions = tf.compat.v1.placeholder(tf.int32, [None, 3])
    outputs = networks.grec_pretrain(itemseq, positions, positions, config,
                                     softmax="sampled")
  optimizer = tf.compat.v1.train.AdamOptimizer(0.001, beta1=0.9)
  train_op = optimizer.minimize(outputs["loss"])
  return config, train_op


@pytest.mark.parametrize("causal,checkpoint_name", [
    (True, "model_nextitnet_transfer_pretrain.ckpt"),
    (False, "model_nextitnet_cloze"),
])
def test_original_checkpoint_restores_without_unmatched_variables(
    causal, checkpoint_name):
  path = conftest.require_checkpoint(
      os.path.join(conftest.DEMO_CHECKPOINT_DIR, checkpoint_name))
  with tf.Graph().as_default():
    _build_pretraining_graph(causal)
    model_variables = [
        v for v in tf.compat.v1.global_variables()
        if not checkpoint_lib.is_optimizer_variable(
            checkpoint_lib.variable_name(v))
    ]
    graph_names = {checkpoint_lib.variable_name(v) for v in model_variables}
    stored = checkpoint_lib.model_variable_shapes(path)
    assert graph_names - set(stored) == set()
    assert set(stored) - graph_names == set()

    assignment_map, restored = checkpoint_lib.assignment_map_from_checkpoint(
        model_variables, path)
    assert restored == graph_names
    tf.compat.v1.train.init_from_checkpoint(path, assignment_map)
    reader = tf.train.load_checkpoint(path)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for variable in model_variables:
        np.testing.assert_array_equal(
            sess.run(variable),
            reader.get_tensor(checkpoint_lib.variable_name(variable)))


@pytest.mark.parametrize("causal,checkpoint_name", [
    (True, "model_nextitnet_transfer_pretrain.ckpt"),
    (False, "model_nextitnet_cloze"),
])
def test_checkpoint_saved_from_our_graph_matches_original(
    causal, checkpoint_name, tmp_path):
  original = conftest.require_checkpoint(
      os.path.join(conftest.DEMO_CHECKPOINT_DIR, checkpoint_name))
  with tf.Graph().as_default():
    _build_pretraining_graph(causal)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      ours = saver.save(sess, str(tmp_path / "ours.ckpt"))
  # Every name and shape, Adam slots and beta powers included.
  assert _all_stored_shapes(ours) == _all_stored_shapes(original)


def test_shape_mismatch_names_the_variable_and_both_sizes():
  path = conftest.require_checkpoint(conftest.PRETRAIN_CHECKPOINT)
  config = modeling.ModelConfig(causal=True, **dict(DEMO_CONFIG, item_size=180))
  with pytest.raises(ValueError) as error:
    checkpoint_lib.check_shapes_match(
        path, modeling.backbone_variable_shapes(config))
  message = str(error.value)
  assert "allitem_embeddings: checkpoint [175, 64], configuration/data [180, 64]" in message

  with tf.Graph().as_default():
    hidden, _ = modeling.backbone(tf.zeros([2, 5], tf.int32), config)
    with pytest.raises(ValueError, match=r"allitem_embeddings: checkpoint "
                       r"\[175, 64\], graph \[180, 64\]"):
      checkpoint_lib.assignment_map_from_checkpoint(
          tf.compat.v1.global_variables(), path)
    del hidden


def test_backbone_variable_shapes_match_the_graph():
  for patch, cardinality in ((None, 1), ("serial", 1), ("parallel", 4)):
    for positional in (False, True):
      config = modeling.ModelConfig(causal=False,
                                    has_positional_embedding=positional,
                                    **DEMO_CONFIG)
      with tf.Graph().as_default():
        modeling.backbone(tf.zeros([2, 5], tf.int32), config, patch=patch,
                          cardinality=cardinality)
        built = {checkpoint_lib.variable_name(v): v.shape.as_list()
                 for v in tf.compat.v1.global_variables()}
      assert built == modeling.backbone_variable_shapes(config, patch,
                                                        cardinality)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    checkpoint_lib.resolve_checkpoint(str(tmp_path / "nothing.ckpt"))
  with pytest.raises(ValueError, match="No checkpoint found in directory"):
    checkpoint_lib.resolve_checkpoint(str(tmp_path))
