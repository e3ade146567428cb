"""Unit tests of the graph ops: values, causality, gradients."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ops import blocks
from ops import checkpoint as checkpoint_lib
from ops import heads
from ops import layers
from ops import modeling
from ops import networks

TINY = dict(item_size=23, channels=16, dilations=[1, 2, 1, 2], kernel_size=3)


def _run(fetches, feed=None):
  with tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    return sess.run(fetches, feed)


def _variables_by_name():
  return {checkpoint_lib.variable_name(v): v
          for v in tf.compat.v1.global_variables()}


def _numpy_dilated_conv(x, weight, bias, dilation, causal):
  """Reference: out[t] = sum_j x[t + j*d - pad_left] @ W[j] + b."""
  _, length, _ = x.shape
  kernel_size = weight.shape[1]
  total = (kernel_size - 1) * dilation
  left = total if causal else total // 2
  padded = np.pad(x, [(0, 0), (left, total - left), (0, 0)])
  out = np.zeros(x.shape[:2] + (weight.shape[-1],), np.float64)
  for j in range(kernel_size):
    out += padded[:, j * dilation:j * dilation + length, :] @ weight[0, j]
  return out + bias


@pytest.mark.parametrize("implementation", layers.CONV_IMPLEMENTATIONS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (3, 4), (2, 2),
                                                  (4, 3), (1, 1)])
def test_conv1d_matches_numpy(implementation, causal, kernel_size, dilation):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 9, 5)).astype(np.float32)
  with tf.Graph().as_default():
    out = layers.conv1d(tf.constant(x), 7, dilation, kernel_size, causal,
                        name="conv", implementation=implementation)
    variables = _variables_by_name()
    weight, bias = variables["conv/weight"], variables["conv/bias"]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      bias.load(rng.normal(size=7).astype(np.float32), sess)
      got, w, b = sess.run([out, weight, bias])
  assert w.shape == (1, kernel_size, 5, 7)
  np.testing.assert_allclose(got, _numpy_dilated_conv(x, w, b, dilation, causal),
                             rtol=1e-5, atol=1e-5)


def test_conv1d_rejects_unknown_implementation():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="Unknown conv implementation"):
      layers.conv1d(tf.zeros([1, 3, 2]), 2, implementation="fft")


def test_layer_norm_values():
  x = np.array([[[1.0, 2.0, 3.0, 6.0]]], np.float32)
  with tf.Graph().as_default():
    out = layers.layer_norm(tf.constant(x), "ln")
    got = _run(out)
  expected = (x - 3.0) / math.sqrt(np.var(x) + 1e-8)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_gelu_values():
  x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0], np.float32)
  with tf.Graph().as_default():
    got = _run(layers.gelu(tf.constant(x)))
  expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cardinality,hidden", [(1, 16), (2, 8), (4, 4)])
def test_patch_width_and_identity_at_zero_up_projection(cardinality, hidden):
  x = np.random.default_rng(1).normal(size=(2, 5, 64)).astype(np.float32)
  with tf.Graph().as_default():
    out = layers.get_mp(tf.constant(x), cardinality, name="mp_1")
    variables = _variables_by_name()
    assert len(variables) == 4 * cardinality
    assert variables["mp_1/mp_conv1_down_0/weight"].shape.as_list() == [
        1, 1, 64, hidden]
    assert variables["mp_1/mp_conv1_up_0/weight"].shape.as_list() == [
        1, 1, hidden, 64]
    # Up-projections start random, so the patch changes its input ...
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      assert np.abs(sess.run(out) - x).max() > 1e-4
      # ... and with zero up-projections it is exactly the identity.
      for name, variable in variables.items():
        if "_up_" in name:
          variable.load(np.zeros(variable.shape.as_list(), np.float32), sess)
      np.testing.assert_array_equal(sess.run(out), x)


def test_patch_too_wide_cardinality_is_an_error():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="cardinality 32 is too large"):
      layers.get_mp(tf.zeros([1, 2, 64]), cardinality=32)


@pytest.mark.parametrize("patch", [None, "serial", "parallel"])
def test_causal_backbone_ignores_the_future(patch):
  config = modeling.ModelConfig(causal=True, **TINY)
  rng = np.random.default_rng(2)
  sequence = rng.integers(1, TINY["item_size"], size=(2, 12))
  changed = sequence.copy()
  position = 6
  changed[:, position + 1:] = rng.integers(1, TINY["item_size"],
                                           size=(2, 12 - position - 1))
  with tf.Graph().as_default():
    ids = tf.compat.v1.placeholder(tf.int32, [None, None])
    hidden, _ = modeling.backbone(ids, config, patch=patch)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      before = sess.run(hidden, {ids: sequence})
      after = sess.run(hidden, {ids: changed})
  np.testing.assert_array_equal(before[:, :position + 1],
                                after[:, :position + 1])
  assert np.abs(before[:, position + 1:] - after[:, position + 1:]).max() > 1e-3


@pytest.mark.parametrize("patch", [None, "parallel"])
def test_noncausal_backbone_sees_the_future(patch):
  config = modeling.ModelConfig(causal=False, **TINY)
  sequence = np.arange(1, 13).reshape(1, 12) % TINY["item_size"]
  changed = sequence.copy()
  changed[0, -1] = 20
  with tf.Graph().as_default():
    ids = tf.compat.v1.placeholder(tf.int32, [None, None])
    hidden, _ = modeling.backbone(ids, config, patch=patch)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      before = sess.run(hidden, {ids: sequence})
      after = sess.run(hidden, {ids: changed})
  # The first position depends on the last item through the receptive field.
  assert np.abs(before[0, 0] - after[0, 0]).max() > 0
  assert np.abs(before[0, :-1] - after[0, :-1]).max(axis=-1).min() > 0


def test_positional_embedding_doubles_the_width():
  config = modeling.ModelConfig(causal=False, has_positional_embedding=True,
                                max_position=20, **TINY)
  with tf.Graph().as_default():
    hidden, _ = modeling.backbone(tf.ones([3, 7], tf.int32), config)
    assert hidden.shape.as_list() == [3, 7, 2 * TINY["channels"]]
    table = _variables_by_name()["dec_pos/lookup_table_position"]
    assert table.shape.as_list() == [20, TINY["channels"]]
    assert _run(hidden).shape == (3, 7, 32)


@pytest.mark.parametrize("causal,patch", [(True, "serial"), (True, "parallel"),
                                          (False, "parallel")])
def test_one_step_gradients_reach_patch_layer_norm2_and_head(causal, patch):
  config = modeling.ModelConfig(causal=causal, **TINY)
  rng = np.random.default_rng(3)
  with tf.Graph().as_default():
    rows = tf.constant(rng.integers(1, TINY["item_size"], size=(4, 9)),
                       tf.int32)
    user, _ = networks.peterrec_user_vectors(rows[:, :-1], config, patch)
    table = heads.target_embedding_table(11, config.hidden_size)
    positives = tf.constant([1, 2, 3, 4])
    negatives = tf.constant([5, 6, 7, 8])
    loss = heads.bce_loss(heads.target_logits(user, table, positives),
                          heads.target_logits(user, table, negatives))
    loss += heads.regularization_loss()
    trained = [v for v in tf.compat.v1.trainable_variables()
               if "mp" in v.name or "layer_norm2" in v.name or
               "target-item" in v.name]
    gradients = tf.gradients(loss, trained)
    values = _run(gradients)
  names = [checkpoint_lib.variable_name(v) for v in trained]
  assert any("mp_1" in n for n in names) and any("mp_2" in n for n in names)
  assert any("layer_norm2" in n for n in names)
  assert "target-item/allitem_embeddings_target" in names
  for name, gradient in zip(names, values):
    gradient = getattr(gradient, "values", gradient)
    assert np.abs(gradient).sum() > 0, name


def test_regularizer_is_contrib_l2_and_loss_takes_the_mean():
  with tf.Graph().as_default():
    table = heads.target_embedding_table(5, 4)
    collection = tf.compat.v1.get_collection(
        tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES)
    assert len(collection) == 1
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      weights, reg = sess.run([table, heads.regularization_loss()])
  np.testing.assert_allclose(reg, 0.02 * np.sum(weights**2) / 2, rtol=1e-6)


def test_bce_and_bpr_losses():
  pos = np.array([2.0, -1.0], np.float32)
  neg = np.array([0.5, 1.0], np.float32)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  with tf.Graph().as_default():
    bce, bpr = _run([heads.bce_loss(pos, neg), heads.bpr_loss(pos, neg)])
  np.testing.assert_allclose(
      bce, np.mean(-np.log(sigmoid(pos)) - np.log(1 - sigmoid(neg))), rtol=1e-6)
  np.testing.assert_allclose(bpr, -np.mean(np.log(sigmoid(pos - neg))),
                             rtol=1e-6)


def test_candidate_scores_and_gather_indexes():
  rng = np.random.default_rng(4)
  user = rng.normal(size=(2, 3)).astype(np.float32)
  table = rng.normal(size=(6, 3)).astype(np.float32)
  candidates = np.array([[1, 5, 2], [0, 0, 4]])
  sequence = rng.normal(size=(2, 4, 3)).astype(np.float32)
  with tf.Graph().as_default():
    scores, logits, gathered = _run([
        heads.candidate_scores(user, table, candidates),
        heads.target_logits(user, table, np.array([5, 4])),
        heads.gather_indexes(tf.constant(sequence), tf.constant([[0, 3],
                                                                 [2, 2]])),
    ])
  np.testing.assert_allclose(scores, np.einsum("bc,bnc->bn", user,
                                               table[candidates]), rtol=1e-5)
  np.testing.assert_allclose(logits, [scores[0, 1], scores[1, 2]], rtol=1e-5)
  np.testing.assert_array_equal(
      gathered, np.stack([sequence[0, 0], sequence[0, 3], sequence[1, 2],
                          sequence[1, 2]]))


def test_residual_block_scope_names():
  with tf.Graph().as_default():
    blocks.residual_block(tf.zeros([1, 4, 8]), 4, 3, 3, patch="serial")
    names = sorted(checkpoint_lib.variable_name(v)
                   for v in tf.compat.v1.global_variables())
  prefix = "nextitnet_residual_blockdecoder_layer_3_4/"
  assert all(name.startswith(prefix) for name in names)
  assert prefix + "dilated_conv2/weight" in names
  assert prefix + "mp_2/mp_conv1_up_0/bias" in names
  assert len(names) == 8 + 8


def test_model_config_round_trip(tmp_path):
  config = modeling.ModelConfig(item_size=9, channels=8, causal=False)
  path = tmp_path / modeling.CONFIG_FILENAME
  path.write_text(config.to_json_string())
  assert modeling.ModelConfig.from_json_file(str(path)) == config
  with pytest.raises(ValueError, match="Unknown ModelConfig keys"):
    modeling.ModelConfig.from_dict({"item_size": 3, "hidden": 4})
