"""peterrec_finetune: what each method trains, restores and leaves frozen.

Fast graph-level tests (no Estimator): the trainable sets and their exact
sizes for the demo configuration, bit-identical frozen variables after
training steps for every method on both backbones, and the clear errors
when checkpoint, configuration and data disagree.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import finetuning
import peterrec_finetune as ft
from ops import checkpoint as checkpoint_lib
from ops import heads
from ops import modeling
from tests import conftest
from tfrecord_tools import convert_csv

DEMO_TARGETS = 32  # 31 demo target ids + <UNK> (data/peterrec_demo/SOURCE.md)


def demo_config(causal=True):
  return modeling.ModelConfig(item_size=175, channels=64,
                              dilations=[1, 4, 1, 4, 1, 4, 1, 4],
                              kernel_size=3, causal=causal)


# ---------------------------------------------------------------------------
# Parameter accounting, computed by hand for the demo configuration
# ---------------------------------------------------------------------------

# C = 64, 175 items, 8 blocks, kernel 3, 32 targets:
HEAD = 32 * 64                                  # target-item table = 2048
CONV = 3 * 64 * 64 + 64                         # weight + bias = 12352
BLOCK = 2 * CONV + 2 * (64 + 64)                # 2 convs + 2 layer norms
BACKBONE = 175 * 64 + 8 * BLOCK                 # embeddings + 8 blocks
PATCH = 64 * 16 + 16 + 16 * 64 + 64             # C -> C/4 -> C, with biases
PATCHES = 8 * 2 * PATCH                         # mp_1, mp_2 in every block
LAYER_NORM2 = 8 * (64 + 64)                     # beta + gamma per block
PATCH4 = 4 * (64 * 4 + 4 + 4 * 64 + 64)         # cardinality 4: 4 x C/16
EXPECTED_COUNTS = {
    # method: (trainable, total)
    "peterrec": (HEAD + PATCHES + LAYER_NORM2, BACKBONE + PATCHES + HEAD),
    "peterzero": (HEAD + PATCHES + LAYER_NORM2, BACKBONE + PATCHES + HEAD),
    "finecls": (HEAD, BACKBONE + HEAD),
    "finelast1": (HEAD + BLOCK, BACKBONE + HEAD),
    "finelast2": (HEAD + 2 * BLOCK, BACKBONE + HEAD),
    "fineall": (BACKBONE + HEAD, BACKBONE + HEAD),
    "scratch": (BACKBONE + HEAD, BACKBONE + HEAD),
}


def test_hand_computed_sizes_are_what_we_think():
  assert (HEAD, CONV, BLOCK, BACKBONE) == (2048, 12352, 24960, 210880)
  assert (PATCH, PATCHES, LAYER_NORM2, PATCH4) == (2128, 34048, 1024, 2320)
  assert EXPECTED_COUNTS["peterrec"] == (37120, 246976)


COUNT_CASES = [(m, True) for m in sorted(EXPECTED_COUNTS)] + [
    ("peterrec", False), ("fineall", False)]


@pytest.mark.parametrize(
    "method,causal", COUNT_CASES,
    ids=["%s-%s" % (m, "nextitnet" if c else "grec") for m, c in COUNT_CASES])
def test_parameter_counts_demo_config(method, causal):
  report = finetuning.parameter_report(demo_config(causal), method, "serial", 1,
                               DEMO_TARGETS)
  trainable, total = EXPECTED_COUNTS[method]
  assert report["trainable_parameters"] == trainable
  assert report["total_parameters"] == total
  assert report["trainable_percent"] == pytest.approx(100.0 * trainable /
                                                      total)
  assert report["task_artifact_bytes"] == 4 * trainable
  # The non-causal graph creates softmax_w (restored, never used).
  assert report["unused_parameters"] == (0 if causal else 175 * 64)


def test_parameter_counts_parallel_and_cardinality():
  parallel = finetuning.parameter_report(demo_config(), "peterrec", "parallel", 1,
                                 DEMO_TARGETS)
  assert parallel["trainable_parameters"] == HEAD + PATCHES + LAYER_NORM2
  card4 = finetuning.parameter_report(demo_config(), "peterrec", "serial", 4,
                              DEMO_TARGETS)
  assert card4["trainable_parameters"] == HEAD + 16 * PATCH4 + LAYER_NORM2
  assert card4["total_parameters"] == BACKBONE + 16 * PATCH4 + HEAD


def test_peterrec_trains_a_small_fraction():
  report = finetuning.parameter_report(demo_config(), "peterrec", "serial", 1,
                               DEMO_TARGETS)
  assert 15.0 < report["trainable_percent"] < 15.1  # 37120 / 246976


# ---------------------------------------------------------------------------
# trainable_variables_for on names
# ---------------------------------------------------------------------------


def _demo_variables(method, causal=True):
  graph = tf.Graph()
  with graph.as_default():
    context = tf.compat.v1.placeholder(tf.int32, [None, 10])
    finetuning.build_finetune_model(context, demo_config(causal), method, "serial", 1,
                            DEMO_TARGETS)
    variables = tf.compat.v1.trainable_variables()
  trained = finetuning.trainable_variables_for(method, variables, 8)
  return ([checkpoint_lib.variable_name(v) for v in variables],
          [checkpoint_lib.variable_name(v) for v in trained])


def test_selection_by_name():
  names, trained = _demo_variables("peterrec")
  assert all(finetuning.is_patch_variable(n) or "/layer_norm2/" in n or
             n.startswith("target-item/") for n in trained)
  assert len([n for n in trained if finetuning.is_patch_variable(n)]) == 8 * 2 * 4
  assert not any("layer_norm1" in n or "dilated_conv" in n and
                 "mp_" not in n for n in trained)
  _, last1 = _demo_variables("finelast1")
  assert sorted({n.split("/")[0] for n in last1}) == [
      "nextitnet_residual_blockdecoder_layer_7_4", "target-item"]
  _, last2 = _demo_variables("finelast2")
  assert sorted({n.split("/")[0] for n in last2}) == [
      "nextitnet_residual_blockdecoder_layer_6_1",
      "nextitnet_residual_blockdecoder_layer_7_4", "target-item"]
  _, cls = _demo_variables("finecls")
  assert cls == ["target-item/allitem_embeddings_target"]
  names, everything = _demo_variables("fineall", causal=False)
  assert "softmax_w" in names and "softmax_w" not in everything
  assert len(everything) == len(names) - 1


def test_patch_variable_names():
  assert finetuning.is_patch_variable(
      "nextitnet_residual_blockdecoder_layer_0_1/mp_1/mp_conv1_down_0/weight")
  assert not finetuning.is_patch_variable(
      "nextitnet_residual_blockdecoder_layer_0_1/layer_norm2/gamma")
  assert not finetuning.is_patch_variable("dec_pos/lookup_table_position")
  assert finetuning.block_index(
      "nextitnet_residual_blockdecoder_layer_12_4/dilated_conv1/bias") == 12
  assert finetuning.block_index("target-item/allitem_embeddings_target") is None


# ---------------------------------------------------------------------------
# Frozen variables stay bit-identical; trained ones change (every method)
# ---------------------------------------------------------------------------

TINY_ITEMS = 23
TINY_TARGETS = 9
TINY_SOURCE = 6


def tiny_config(causal):
  return modeling.ModelConfig(item_size=TINY_ITEMS, channels=16,
                              dilations=[1, 2, 1], kernel_size=3,
                              causal=causal)


def write_tiny_backbone(directory, causal):
  """A 'pretrained' checkpoint of the tiny backbone (random values) with
  the extra variables real pretraining checkpoints hold (softmax, Adam)."""
  config = tiny_config(causal)
  with tf.Graph().as_default():
    context = tf.zeros([2, 5], tf.int32)
    hidden, _ = modeling.backbone(context, config)
    heads.softmax_variables(config.item_size, config.hidden_size)
    loss = tf.reduce_sum(hidden)
    train = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(train)
      return saver.save(session, os.path.join(directory, "pretrain.ckpt"))


def tiny_features(causal, batch_size=8, seed=0):
  rng = np.random.RandomState(seed)
  source = rng.randint(1, TINY_ITEMS, size=[batch_size, TINY_SOURCE])
  target = rng.randint(1, TINY_TARGETS, size=[batch_size])
  negative = (target + rng.randint(1, TINY_TARGETS - 1, size=[batch_size]) -
              1) % (TINY_TARGETS - 1) + 1
  zeros = np.zeros([batch_size, 1], np.int64)
  parts = ([source, zeros, target[:, None]] if causal else
           [zeros, source, zeros, target[:, None]])
  return {
      "rows": tf.constant(np.concatenate(parts, 1), tf.int32),
      "target": tf.constant(target, tf.int32),
      "negatives": tf.constant(negative[:, None], tf.int32),
  }


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_backbones")
  return {causal: write_tiny_backbone(str(root / str(causal)), causal)
          for causal in (True, False)}


def _train_steps(model_fn, features, steps):
  """Builds TRAIN, runs `steps` train ops; returns (names, trained names,
  values before, values after)."""
  spec = model_fn(features, None, tf.estimator.ModeKeys.TRAIN, {})
  variables = tf.compat.v1.trainable_variables()
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    named = {checkpoint_lib.variable_name(v): v for v in variables}
    before = session.run(named)
    for _ in range(steps):
      session.run(spec.train_op)
    after = session.run(named)
  return before, after


METHOD_CASES = [(m, True, "serial") for m in finetuning.METHODS] + [
    (m, False, "parallel") for m in finetuning.METHODS] + [("peterrec", True,
                                                     "parallel")]


@pytest.mark.parametrize(
    "method,causal,insertion", METHOD_CASES,
    ids=["%s-%s-%s" % (m, "nextitnet" if c else "grec", i)
         for m, c, i in METHOD_CASES])
def test_frozen_bit_identical_trained_changed(method, causal, insertion,
                                              tiny_backbones):
  checkpoint = tiny_backbones[causal]
  config = tiny_config(causal)
  model_fn = ft.model_fn_builder(
      config, checkpoint if finetuning.restores_backbone(method) else None, method,
      insertion, 2, "recommendation", TINY_TARGETS, learning_rate=0.01)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(3)
    before, after = _train_steps(model_fn, tiny_features(causal), steps=3)
    trained = {checkpoint_lib.variable_name(v) for v in
               finetuning.trainable_variables_for(
                   method, tf.compat.v1.trainable_variables(), 3)}
  reader = tf.train.load_checkpoint(checkpoint)
  stored = checkpoint_lib.model_variable_shapes(checkpoint)
  assert trained, "nothing trained"
  frozen = sorted(set(before) - trained)
  for name in frozen:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert after[name].tobytes() == before[name].tobytes(), name
  for name in sorted(trained):
    assert not np.array_equal(after[name], before[name]), (
        "%s was not updated" % name)
  if finetuning.restores_backbone(method):
    # Warm start: every variable without `mp` that the checkpoint holds.
    for name in before:
      if name in stored and not finetuning.is_patch_variable(name):
        np.testing.assert_array_equal(before[name], reader.get_tensor(name),
                                      err_msg=name)
        if name not in trained:
          assert after[name].tobytes() == reader.get_tensor(name).tobytes()
  else:
    # PeterZero / scratch: nothing restored.
    for name in ("allitem_embeddings",):
      assert not np.array_equal(before[name], reader.get_tensor(name))
  expected_frozen_kinds = {
      "peterrec": lambda n: not (finetuning.is_patch_variable(n) or
                                 "/layer_norm2/" in n or
                                 n.startswith("target-item/")),
      "fineall": lambda n: n == "softmax_w",
      "scratch": lambda n: n == "softmax_w",
      "finecls": lambda n: not n.startswith("target-item/"),
  }
  expected_frozen_kinds["peterzero"] = expected_frozen_kinds["peterrec"]
  if method in expected_frozen_kinds:
    assert frozen == sorted(n for n in before
                            if expected_frozen_kinds[method](n))


def test_eval_and_predict_specs(tiny_backbones):
  config = tiny_config(True)
  for protocol, task in (("sampled", "recommendation"),
                         ("full", "recommendation"),
                         ("sampled", "classification")):
    model_fn = ft.model_fn_builder(config, tiny_backbones[True], "peterrec",
                                   "serial", 1, task, TINY_TARGETS,
                                   eval_protocol=protocol, top_k=3)
    with tf.Graph().as_default():
      features = tiny_features(True, batch_size=5)
      spec = model_fn(features, None, tf.estimator.ModeKeys.EVAL, {})
      names = set(spec.eval_metric_ops)
      if task == "classification":
        assert names == {"accuracy", "num_examples"}
      else:
        assert names == {"mrr@3", "hr@3", "ndcg@3", "num_examples"}
  with tf.Graph().as_default():
    spec = model_fn(tiny_features(True, batch_size=5), None,
                    tf.estimator.ModeKeys.PREDICT, {})
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      out = session.run(spec.predictions)
  assert out["top_ids"].shape == (5, TINY_TARGETS - 1)
  assert (out["top_ids"] > 0).all()  # <UNK> is never predicted


# ---------------------------------------------------------------------------
# Configuration and compatibility
# ---------------------------------------------------------------------------


def test_backbone_from_authors_checkpoints():
  for prefix in (conftest.PRETRAIN_CHECKPOINT, conftest.CLOZE_CHECKPOINT):
    conftest.require_checkpoint(prefix)
    stored = finetuning.backbone_from_checkpoint(prefix)
    assert stored == {"item_size": 175, "channels": 64,
                      "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
                      "kernel_size": 3, "has_positional_embedding": False,
                      "max_position": None}


def test_resolve_config_needs_backbone_without_config_file():
  prefix = conftest.require_checkpoint(conftest.PRETRAIN_CHECKPOINT)
  with pytest.raises(finetuning.CompatibilityError, match="--backbone"):
    finetuning.resolve_model_config(prefix)
  config, source = finetuning.resolve_model_config(prefix, backbone="grec")
  assert not config.causal and config.item_size == 175
  assert "shapes of checkpoint" in source


def test_resolve_config_from_model_config_json(tmp_path):
  config = tiny_config(causal=False)
  checkpoint = write_tiny_backbone(str(tmp_path), causal=False)
  (tmp_path / modeling.CONFIG_FILENAME).write_text(config.to_json_string())
  resolved, source = finetuning.resolve_model_config(checkpoint)
  assert resolved == config and source.endswith(modeling.CONFIG_FILENAME)
  with pytest.raises(finetuning.CompatibilityError, match="causal"):
    finetuning.resolve_model_config(checkpoint, backbone="nextitnet")


def test_compatibility_errors_name_the_sizes():
  prefix = conftest.require_checkpoint(conftest.PRETRAIN_CHECKPOINT)
  metadata = {"item_vocab_size": 180, "data_dir": "/data"}
  config = demo_config()
  with pytest.raises(finetuning.CompatibilityError) as error:
    finetuning.check_compatibility(prefix, config, metadata)
  assert "item vocabulary: checkpoint 175, data 180" in str(error.value)
  assert "--item_vocab" in str(error.value)
  metadata["item_vocab_size"] = 175
  with pytest.raises(finetuning.CompatibilityError) as error:
    finetuning.check_compatibility(prefix, config.replace(channels=32, dilations=[1, 2]),
                           metadata)
  assert "channels: checkpoint 64, configuration 32" in str(error.value)
  assert ("dilations: checkpoint [1, 4, 1, 4, 1, 4, 1, 4], configuration "
          "[1, 2]") in str(error.value)
  finetuning.check_compatibility(prefix, config, metadata)  # the right one passes


def test_same_size_but_different_item_vocabulary(tmp_path):
  data = convert_csv.make_finetune_dataset(
      str(tmp_path / "data"), [["a", "b", "c"], ["d", "e", "f"]],
      [["x"], ["y"]], test_fraction=0.5)
  assert data["item_vocab_size"] == 7
  config = tiny_config(True).replace(item_size=7)
  model_dir = tmp_path / "pretrain"
  model_dir.mkdir()
  with tf.Graph().as_default():
    modeling.backbone(tf.zeros([1, 3], tf.int32), config)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = tf.compat.v1.train.Saver().save(session,
                                               str(model_dir / "model.ckpt"))
  metadata = dict(data, data_dir=str(tmp_path / "data"))
  finetuning.check_compatibility(prefix, config, metadata)  # no vocabulary file: ok
  data_loader.Vocabulary(["a", "b", "c", "d", "e", "f"]).save(
      str(model_dir / "item_vocab.txt"))
  finetuning.check_compatibility(prefix, config, metadata)  # the same ids: ok
  data_loader.Vocabulary(["f", "e", "d", "c", "b", "a"]).save(
      str(model_dir / "item_vocab.txt"))
  with pytest.raises(finetuning.CompatibilityError, match="different ids"):
    finetuning.check_compatibility(prefix, config, metadata)


def test_target_ids_beyond_the_item_vocabulary_train(tiny_backbones):
  # Cold-start targets live in their own vocabulary, which may be larger than
  # the item vocabulary (Amazon afk: 16,259 targets, 11,839 items). Only the
  # item columns of `rows` are range-checked against the item vocabulary.
  target_size = TINY_ITEMS + 20
  model_fn = ft.model_fn_builder(tiny_config(True), tiny_backbones[True],
                                 "peterrec", "serial", 1, "recommendation",
                                 target_size, learning_rate=0.01)
  with tf.Graph().as_default():
    big_target = tf.fill([8], target_size - 1)
    features = tiny_features(True)
    features["rows"] = tf.concat(
        [features["rows"][:, :-1], tf.expand_dims(big_target, 1)], axis=1)
    features["target"] = big_target
    spec = model_fn(features, None, tf.estimator.ModeKeys.TRAIN, {})
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      _, loss = session.run([spec.train_op, spec.loss])
  assert np.isfinite(loss)
