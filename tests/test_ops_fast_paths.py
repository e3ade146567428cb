"""The faster formulations in ops/ compute the same values and gradients.

benchmarks/README.md lists these changes and what each one bought. Each is
checked here against the formulation it replaces (values and gradients),
and the golden files are also matched with the original formulations
selected, so both stay covered.
"""
import functools

import numpy as np
import pytest
import tensorflow as tf

from ops import heads
from ops import layers
from ops import modeling
from ops import networks
from tests import test_ops_golden


def _initialize(sess, variables, initial=None):
  """Runs the initializers, then loads `initial` {name: value} if given."""
  sess.run(tf.compat.v1.global_variables_initializer())
  if initial is not None:
    for variable in variables:
      variable.load(initial[variable.op.name], sess)


def _run(fetches):
  with tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    return sess.run(fetches)


def _conv_and_gradients(x, implementation, dilation, kernel_size, causal,
                        dynamic_length, time_major=False):
  """Output and input/weight/bias gradients of one conv1d, fixed weights.

  `x` and the results are batch-major; with time_major the conv is applied
  to the transposed input and its output transposed back.
  """
  rng = np.random.default_rng(1)
  weight = rng.normal(size=(1, kernel_size, x.shape[-1], 6)).astype(np.float32)
  bias = rng.normal(size=6).astype(np.float32)
  upstream = rng.normal(size=x.shape[:2] + (6,)).astype(np.float32)
  with tf.Graph().as_default():
    shape = [None, None, x.shape[-1]] if dynamic_length else x.shape
    inputs = tf.compat.v1.placeholder(tf.float32, shape)
    if time_major:
      out = tf.transpose(layers.conv1d(
          tf.transpose(inputs, [1, 0, 2]), 6, dilation, kernel_size, causal,
          name="conv", implementation=implementation, time_major=True),
                         [1, 0, 2])
    else:
      out = layers.conv1d(inputs, 6, dilation, kernel_size, causal,
                          name="conv", implementation=implementation)
    variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    grads = tf.gradients(out, [inputs, variables["conv/weight"],
                               variables["conv/bias"]], grad_ys=upstream)
    with tf.compat.v1.Session() as sess:
      variables["conv/weight"].load(weight, sess)
      variables["conv/bias"].load(bias, sess)
      return sess.run([out] + grads, {inputs: x})


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (3, 4), (3, 8),
                                                  (2, 3), (4, 5), (1, 1),
                                                  (2, 9)])
def test_matmul_conv_per_tap_matches_stacked_and_atrous(
    causal, kernel_size, dilation):
  # Length 9: dilation 8 makes some taps fall entirely outside the sequence;
  # kernel 2 with dilation 9 non-causal reads padding only (output = bias).
  x = np.random.default_rng(0).normal(size=(3, 9, 5)).astype(np.float32)
  atrous = _conv_and_gradients(x, "atrous", dilation, kernel_size, causal,
                               dynamic_length=True)
  for dynamic_length, time_major in [(False, False), (False, True),
                                     (True, False), (True, True)]:
    # Static length: one product per tap (`_conv1d_taps`); dynamic length:
    # the stacked fallback (`_conv1d_as_matmul`).
    got = _conv_and_gradients(x, "matmul", dilation, kernel_size, causal,
                              dynamic_length, time_major)
    for name, value, want in zip(["out", "d_x", "d_w", "d_b"], got, atrous):
      np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5,
                                 err_msg="%s %s %s" % (
                                     name, dynamic_length, time_major))


def _cpu_conv2d_supports_dilations():
  """TensorFlow's Eigen conv2d (oneDNN off, e.g. on CPUs without AVX-512)
  runs dilations > 1 forward but rejects them in its gradients."""
  with tf.Graph().as_default():
    x, w = tf.zeros([1, 1, 5, 1]), tf.zeros([1, 2, 1, 1])
    out = tf.nn.conv2d(x, w, strides=1, padding="VALID",
                       dilations=[1, 1, 2, 1])
    with tf.compat.v1.Session() as sess:
      try:
        sess.run([out, tf.gradients(out, [x, w])])
        return True
      except tf.errors.InvalidArgumentError:
        return False


@pytest.mark.parametrize("implementation", ["atrous", "conv2d"])
def test_time_major_conv_transposes_around_the_batch_major_kernels(
    implementation):
  if implementation == "conv2d" and not _cpu_conv2d_supports_dilations():
    pytest.skip("this CPU's TensorFlow conv2d has no dilated gradients "
                "(oneDNN is off here): --conv_implementation=conv2d cannot "
                "run dilated blocks on this machine")
  x = np.random.default_rng(8).normal(size=(2, 7, 4)).astype(np.float32)
  want = _conv_and_gradients(x, implementation, 2, 3, True, False)
  got = _conv_and_gradients(x, implementation, 2, 3, True, False,
                            time_major=True)
  for value, expected in zip(got, want):
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-6)


def test_matmul_conv_static_length_has_no_strided_slices_or_padding_copies():
  with tf.Graph().as_default() as graph:
    inputs = tf.zeros([7, 2, 4])
    out = layers.conv1d(inputs, 4, 2, 3, causal=False, name="conv",
                        implementation="matmul", time_major=True)
    tf.gradients(out, inputs)
    op_types = {op.type for op in graph.get_operations()}
  for op_type in ("StridedSlice", "StridedSliceGrad", "Pad", "Transpose"):
    assert op_type not in op_types


def _layer_norm_and_gradients(x, implementation, trainable=True):
  rng = np.random.default_rng(2)
  gamma = rng.normal(1.0, 0.3, size=x.shape[-1]).astype(np.float32)
  beta = rng.normal(0.0, 0.3, size=x.shape[-1]).astype(np.float32)
  upstream = rng.normal(size=x.shape).astype(np.float32)
  with tf.Graph().as_default():
    inputs = tf.constant(x)
    out = layers.layer_norm(inputs, "ln", trainable=trainable,
                            implementation=implementation)
    variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    # A relu after the layer norm, as in the residual blocks.
    target = tf.nn.relu(out)
    grads = tf.gradients(target, [inputs, variables["ln/gamma"],
                                  variables["ln/beta"]], grad_ys=upstream)
    with tf.compat.v1.Session() as sess:
      variables["ln/gamma"].load(gamma, sess)
      variables["ln/beta"].load(beta, sess)
      return sess.run([out] + grads)


@pytest.mark.parametrize("shape", [(3, 7, 16), (5, 64), (2, 4, 3, 8)])
def test_analytic_layer_norm_matches_moments(shape):
  rng = np.random.default_rng(3)
  x = (rng.normal(size=shape) * rng.uniform(0.01, 50.0, size=shape[:-1] + (1,))
       + rng.normal(size=shape[:-1] + (1,)) * 10).astype(np.float32)
  analytic = _layer_norm_and_gradients(x, "analytic")
  moments = _layer_norm_and_gradients(x, "moments")
  names = ["output", "d_inputs", "d_gamma", "d_beta"]
  for name, got, want in zip(names, analytic, moments):
    np.testing.assert_allclose(got, want, rtol=2e-5,
                               atol=2e-5 * np.abs(want).max(), err_msg=name)


def test_analytic_layer_norm_constant_rows_and_frozen_variables():
  # A constant row has variance 0: epsilon keeps both finite.
  x = np.ones([2, 3, 4], np.float32)
  out, d_inputs, d_gamma, d_beta = _layer_norm_and_gradients(
      x, "analytic", trainable=False)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(d_inputs))
  want = _layer_norm_and_gradients(x, "moments", trainable=False)
  np.testing.assert_allclose(out, want[0], atol=1e-6)
  np.testing.assert_allclose(d_gamma, want[2], atol=1e-5)
  with tf.Graph().as_default():
    layers.layer_norm(tf.zeros([1, 4]), "ln", trainable=False,
                      implementation="analytic")
    assert not tf.compat.v1.trainable_variables()


def test_layer_norm_rejects_unknown_implementation():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="Unknown layer norm implementation"):
      layers.layer_norm(tf.zeros([1, 4]), "ln", implementation="fused")


def test_model_config_defaults_are_the_fast_paths_and_round_trip():
  config = modeling.ModelConfig(item_size=9)
  assert config.conv_implementation == "matmul"
  assert config.layer_norm_implementation == "analytic"
  assert config.embedding_gradients == "dense"
  assert config.towers == 0
  assert modeling.ModelConfig.from_dict(config.to_dict()) == config
  # A model_config.json written before these fields existed still loads.
  old = config.to_dict()
  for name in ("layer_norm_implementation", "embedding_gradients", "towers",
               "softmax_implementation"):
    del old[name]
  assert modeling.ModelConfig.from_dict(old) == config
  # Execution fields are fields, and only they differ between these configs.
  assert set(modeling.ModelConfig.EXECUTION_FIELDS) <= set(config.to_dict())
  original = config.replace(**modeling.ORIGINAL_EXECUTION)
  assert original.softmax_implementation == "tf"
  assert {k for k, v in original.to_dict().items()
          if v != config.to_dict()[k]} == set(
              modeling.ModelConfig.EXECUTION_FIELDS)


@pytest.mark.parametrize(
    "golden_path", test_ops_golden._golden_params(),
    ids=test_ops_golden._golden_ids())
def test_golden_parity_with_the_original_layer_norm(golden_path, monkeypatch):
  """The golden files also match with layer_norm_implementation="moments"."""
  monkeypatch.setattr(
      modeling, "ModelConfig",
      functools.partial(modeling.ModelConfig,
                        layer_norm_implementation="moments"))
  test_ops_golden.test_golden_parity(golden_path, "matmul")


def _sampled_softmax_pair(item_size, num_rows, num_sampled, seed=4):
  """Losses and gradients of the "tf" and "split" paths, same candidates."""
  rng = np.random.default_rng(seed)
  hidden_np = rng.normal(size=(num_rows, 8)).astype(np.float32)
  labels_np = rng.integers(1, item_size, size=num_rows)
  with tf.Graph().as_default():
    hidden = tf.constant(hidden_np)
    softmax_w, softmax_b = heads.softmax_variables(item_size, 8)
    labels = tf.reshape(tf.constant(labels_np, tf.int64), [-1, 1])
    sampled_values = tf.random.log_uniform_candidate_sampler(
        labels, 1, num_sampled, True, item_size, seed=7)
    reference = tf.compat.v1.nn.sampled_softmax_loss(
        softmax_w, softmax_b, labels, hidden, num_sampled, item_size,
        sampled_values=sampled_values)
    split = heads.split_sampled_softmax_losses(hidden, labels, softmax_w,
                                               softmax_b, sampled_values)
    fetches = {}
    for name, losses in (("tf", reference), ("split", split)):
      grads = tf.gradients(tf.reduce_mean(losses),
                           [hidden, softmax_w, softmax_b])
      fetches[name] = [losses] + [tf.convert_to_tensor(g) for g in grads]
    fetches["hits"] = tf.nn.compute_accidental_hits(labels,
                                                    sampled_values[0], 1)[0]
    return _run(fetches)


@pytest.mark.parametrize("item_size,num_rows,num_sampled",
                         [(50, 40, 20), (500, 30, 100), (12, 25, 10)])
def test_split_sampled_softmax_matches_tf(item_size, num_rows, num_sampled):
  got = _sampled_softmax_pair(item_size, num_rows, num_sampled)
  # Small vocabularies make accidental hits certain: that path is covered.
  if item_size <= 50:
    assert got["hits"].size > 0
  for name, split, reference in zip(["losses", "d_hidden", "d_w", "d_b"],
                                    got["split"], got["tf"]):
    np.testing.assert_allclose(split, reference, rtol=1e-5,
                               atol=1e-6 * max(1.0, np.abs(reference).max()),
                               err_msg=name)


def test_sampled_softmax_loss_implementations_draw_the_same_candidates():
  losses = {}
  for implementation in heads.SAMPLED_SOFTMAX_IMPLEMENTATIONS:
    with tf.Graph().as_default():
      tf.compat.v1.set_random_seed(11)
      rng = np.random.default_rng(5)
      hidden = tf.constant(rng.normal(size=(30, 8)).astype(np.float32))
      labels = tf.constant(rng.integers(1, 200, size=30))
      with tf.compat.v1.variable_scope("head", initializer=(
          tf.compat.v1.constant_initializer(0.05))):
        softmax_w, softmax_b = heads.softmax_variables(200, 8)
      losses[implementation] = _run(heads.sampled_softmax_loss(
          hidden, labels, softmax_w, softmax_b, 40, seed=3,
          implementation=implementation))
  np.testing.assert_allclose(losses["split"], losses["tf"], rtol=1e-6)


def test_sampled_softmax_rejects_unknown_implementation():
  with tf.Graph().as_default():
    softmax_w, softmax_b = heads.softmax_variables(20, 4)
    with pytest.raises(ValueError, match="Unknown sampled softmax"):
      heads.sampled_softmax_loss(tf.zeros([2, 4]), tf.ones([2], tf.int32),
                                 softmax_w, softmax_b, 5,
                                 implementation="nce")


def test_gather_gradient_representations():
  rng = np.random.default_rng(6)
  table_np = rng.normal(size=(10, 3)).astype(np.float32)
  ids_np = np.array([[1, 4, 4], [9, 0, 1]])
  upstream = rng.normal(size=(2, 3, 3)).astype(np.float32)
  results = {}
  for gradient in layers.EMBEDDING_GRADIENTS:
    with tf.Graph().as_default():
      table = tf.compat.v1.get_variable(
          "table", initializer=tf.constant(table_np))
      rows, more = layers.gather(table, [tf.constant(ids_np),
                                         tf.constant([2, 4])],
                                 gradient=gradient)
      grad, = tf.gradients([rows, more], [table],
                           grad_ys=[upstream, tf.ones([2, 3])])
      assert isinstance(grad, tf.IndexedSlices) == (gradient == "sparse")
      results[gradient] = _run([rows, more, tf.convert_to_tensor(grad)])
  for sparse, dense in zip(results["sparse"], results["dense"]):
    np.testing.assert_allclose(dense, sparse, rtol=1e-6, atol=1e-6)
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="Unknown embedding gradient"):
      layers.gather(tf.zeros([3, 2]), [0], gradient="lazy")


def _adam_steps(embedding_gradients, initial=None, steps=3):
  """A few Adam steps of a tiny NextItNet; returns every variable's value."""
  config = modeling.ModelConfig(item_size=30, channels=8, dilations=[1, 2],
                                embedding_gradients=embedding_gradients)
  rng = np.random.default_rng(7)
  batches = rng.integers(1, 30, size=(steps, 4, 6)).astype(np.int32)
  with tf.Graph().as_default() as graph:
    tf.compat.v1.set_random_seed(1)
    itemseq = tf.compat.v1.placeholder(tf.int32, [4, 6])
    loss = networks.nextitnet_pretrain(itemseq, config, num_sampled=10,
                                       seed=5)["loss"]
    train_op = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)
    op_types = {op.type for op in graph.get_operations()}
    variables = tf.compat.v1.global_variables()
    with tf.compat.v1.Session() as sess:
      _initialize(sess, variables, initial)
      start = {v.op.name: sess.run(v) for v in variables}
      for batch in batches:
        sess.run(train_op, {itemseq: batch})
      end = {v.op.name: sess.run(v) for v in variables}
  return start, end, op_types


def test_dense_embedding_gradients_give_the_same_adam_updates():
  start, sparse_end, sparse_ops = _adam_steps("sparse")
  _, dense_end, dense_ops = _adam_steps("dense", initial=start)
  assert "ResourceScatterAdd" in sparse_ops
  assert "ResourceScatterAdd" not in dense_ops
  assert sorted(sparse_end) == sorted(dense_end)
  for name, value in sparse_end.items():
    np.testing.assert_allclose(dense_end[name], value, rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # The tables did move (the comparison is not vacuous).
  assert not np.allclose(sparse_end["softmax_w"], start["softmax_w"])
  assert not np.allclose(sparse_end["allitem_embeddings"],
                         start["allitem_embeddings"])


def test_num_towers():
  config = modeling.ModelConfig(item_size=9, towers=2)
  assert modeling.num_towers(config, 32) == 2
  assert modeling.num_towers(config, 12) == 1  # fewer than 8 rows a tower
  assert modeling.num_towers(config, 512, min_rows=64) == 2
  assert modeling.num_towers(config.replace(towers=1), 512) == 1
  assert modeling.num_towers(config.replace(towers=3), 17) == 2
  with tf.Graph().as_default():
    dynamic = tf.compat.v1.placeholder(tf.int32, [None, 5])
    assert modeling.num_towers(config, layers.get_shape_list(dynamic)[0]) == 1
  assert modeling.num_towers(config.replace(towers=0), 10 ** 6) == (
      modeling.default_towers())
  with pytest.raises(ValueError, match="towers must be >= 0"):
    modeling.num_towers(config.replace(towers=-1), 32)


def _network_outputs(config, itemseq, initial=None, patch=None,
                     softmax="sampled"):
  """NextItNet loss, hidden and gradients of every variable (seeded)."""
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(3)
    if patch is None:
      outputs = networks.nextitnet_pretrain(tf.constant(itemseq), config,
                                            softmax=softmax, num_sampled=12,
                                            seed=4)
      loss, hidden = outputs["loss"], outputs["hidden"]
    else:
      user, hidden = networks.peterrec_user_vectors(
          tf.constant(itemseq), config, patch)
      loss = tf.reduce_sum(tf.square(user))
    variables = tf.compat.v1.global_variables()
    grads = tf.gradients(loss, variables)
    with tf.compat.v1.Session() as sess:
      _initialize(sess, variables, initial)
      values = {v.op.name: sess.run(v) for v in variables}
      results = sess.run({"loss": loss, "hidden": hidden,
                          "grads": {v.op.name: tf.convert_to_tensor(g)
                                    for v, g in zip(variables, grads)}})
  return values, results


@pytest.mark.parametrize("towers,batch_size", [(2, 16), (2, 17), (3, 24)])
@pytest.mark.parametrize("patch,softmax", [(None, "sampled"), (None, "full"),
                                           ("serial", "sampled")])
def test_towers_compute_the_same_loss_and_gradients(towers, batch_size,
                                                     patch, softmax):
  itemseq = np.random.default_rng(9).integers(
      1, 40, size=(batch_size, 9)).astype(np.int32)
  config = modeling.ModelConfig(item_size=40, channels=8, dilations=[1, 2, 4],
                                towers=1)
  initial, want = _network_outputs(config, itemseq, patch=patch,
                                   softmax=softmax)
  _, got = _network_outputs(config.replace(towers=towers), itemseq, initial,
                            patch=patch, softmax=softmax)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["hidden"], want["hidden"], rtol=1e-5,
                             atol=1e-6)
  for name, grad in want["grads"].items():
    # Sums over the batch in another order: errors scale with the largest
    # entries (a bias gradient of ~1 summed from 216 rows differs by 1e-4).
    np.testing.assert_allclose(got["grads"][name], grad, rtol=1e-4,
                               atol=1e-4 * np.abs(grad).max() + 1e-6,
                               err_msg=name)


def test_towers_split_the_graph_and_share_the_variables():
  counts = {}
  for towers in (1, 2):
    config = modeling.ModelConfig(item_size=40, channels=8, dilations=[1, 2],
                                  towers=towers)
    with tf.Graph().as_default() as graph:
      modeling.backbone(tf.zeros([16, 5], tf.int32), config)
      counts[towers] = sum(op.type == "MatMul"
                           for op in graph.get_operations())
      variables = tf.compat.v1.global_variables()
    # Embeddings + 2 blocks x 2 convs x (weight, bias, gamma, beta).
    assert len(variables) == 1 + 2 * 2 * 4
  assert counts[2] == 2 * counts[1]


@pytest.mark.parametrize("towers", [2, 3])
def test_split_sampled_softmax_towers(towers):
  rng = np.random.default_rng(10)
  hidden_np = rng.normal(size=(30, 8)).astype(np.float32)
  labels_np = rng.integers(1, 25, size=(30, 1))
  results = []
  for parts in (1, towers):
    with tf.Graph().as_default():
      hidden = tf.constant(hidden_np)
      softmax_w, softmax_b = heads.softmax_variables(25, 8)
      labels = tf.constant(labels_np, tf.int64)
      sampled_values = tf.random.log_uniform_candidate_sampler(
          labels, 1, 10, True, 25, seed=7)
      tf.compat.v1.set_random_seed(1)
      losses = heads.split_sampled_softmax_losses(
          hidden, labels, softmax_w, softmax_b, sampled_values,
          embedding_gradients="dense", towers=parts)
      grads = tf.gradients(tf.reduce_mean(losses), [hidden, softmax_w,
                                                    softmax_b])
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        softmax_w.load(np.linspace(-1, 1, 200, dtype=np.float32).reshape(
            25, 8), sess)
        results.append(sess.run([losses] + grads))
  for got, want in zip(results[1], results[0]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
