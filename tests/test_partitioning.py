"""The item tables split over parameter servers (--num_embedding_partitions).

(a) A partitioned graph computes the same losses, logits and gradients as
the whole one when its parts hold the same values, and places its parts on
different ps tasks. (b) What a Saver writes for partitioned variables (the
original names, as slices), and distributed/repartition_checkpoint.py
rewriting it whole and back: each restores into the other graph with no
unmatched variable (Adam slots included) and identical values. (c) A
cluster of 2 ps, a chief, a worker and an evaluator trains with 2
partitions; its final checkpoint, converted, evaluates to the evaluator's
metrics in the single-process script and resumes training there.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import nextitnet_pretrain as pretrain
from distributed import local_cluster
from distributed import repartition_checkpoint
from ops import checkpoint as checkpoint_lib
from ops import layers
from ops import modeling
from ops import networks
from tests import test_reliability

CONFIG = modeling.ModelConfig(item_size=11, channels=8, dilations=[1, 2],
                              towers=1)
ITEMSEQ = np.random.RandomState(0).randint(0, 11, size=[4, 6]).astype(
    np.int32)
# Partitioned variables of each head, with the axis they are split along.
SPLIT = {"sampled": ("allitem_embeddings", "softmax_w", "softmax_b"),
         "full": ("allitem_embeddings", "logits/weight", "logits/bias")}


def build_pretraining(config, softmax, train=False):
  """NextItNet on ITEMSEQ with a fixed sampler seed. Returns (fetches,
  {checkpoint name: (variable or parts, full shape)})."""
  tf.compat.v1.set_random_seed(1)
  outputs = networks.nextitnet_pretrain(tf.constant(ITEMSEQ), config,
                                        softmax=softmax, num_sampled=4, seed=3)
  saved = checkpoint_lib.saved_variables(tf.compat.v1.global_variables())
  fetches = {"loss": outputs["loss"], "last_logits": outputs["last_logits"]}
  for name in SPLIT[softmax]:
    parts = layers.shards(saved[name][0])
    gradients = [tf.convert_to_tensor(g)
                 for g in tf.gradients(outputs["loss"], parts)]
    fetches["gradient " + name] = tf.concat(
        gradients, axis=networks.PARTITION_AXES[name])
  if train:
    fetches["train_op"] = tf.compat.v1.train.AdamOptimizer(0.01).minimize(
        outputs["loss"],
        global_step=tf.compat.v1.train.get_or_create_global_step())
  return fetches, saved


@pytest.mark.parametrize("softmax,implementation", [
    ("sampled", "split"), ("sampled", "tf"), ("full", "split")])
@pytest.mark.parametrize("partitioning", ["sparse_3", "dense_2"])
def test_partitioned_graph_computes_the_same_values(tmp_path, softmax,
                                                    implementation,
                                                    partitioning):
  config = CONFIG.replace(softmax_implementation=implementation)
  if partitioning == "sparse_3":  # what the script builds
    split = modeling.partitioned(config, 3)
    assert split.embedding_gradients == "sparse"
  else:  # dense gradients per part
    split = config.replace(embedding_partitions=2)
  with tf.Graph().as_default():
    fetches, _ = build_pretraining(config, softmax)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      whole = session.run(fetches)
      prefix = tf.compat.v1.train.Saver().save(session,
                                               str(tmp_path / "whole.ckpt"))
  with tf.Graph().as_default():
    fetches, saved = build_pretraining(split, softmax)
    for name in SPLIT[softmax]:
      parts, shape = saved[name]
      axis = networks.PARTITION_AXES[name]
      assert len(parts) == split.embedding_partitions, name
      assert sum(p.shape[axis] for p in parts) == shape[axis], name
    assert all("/part_" in v.name for v in tf.compat.v1.global_variables()
               if checkpoint_lib.checkpoint_name(v) in SPLIT[softmax])
    with tf.compat.v1.Session() as session:
      tf.compat.v1.train.Saver().restore(session, prefix)
      values = session.run(fetches)
  assert sorted(values) == sorted(whole)
  for key in whole:
    np.testing.assert_allclose(values[key], whole[key], rtol=1e-5, atol=1e-7,
                               err_msg=key)
  assert np.abs(whole["gradient allitem_embeddings"]).sum() > 0


def test_parts_are_placed_on_different_ps_tasks():
  with tf.Graph().as_default():
    with tf.compat.v1.device(
        tf.compat.v1.train.replica_device_setter(ps_tasks=2)):
      tf.compat.v1.train.get_or_create_global_step()
      build_pretraining(modeling.partitioned(CONFIG, 2), "sampled")
    saved = checkpoint_lib.saved_variables(tf.compat.v1.global_variables())
  for name in SPLIT["sampled"]:
    assert sorted(p.device for p in saved[name][0]) == [
        "/job:ps/task:0", "/job:ps/task:1"], name


def test_fine_tuning_refuses_a_partitioned_config():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="embedding_partitions=2"):
      networks.peterrec_user_vectors(
          tf.zeros([2, 5], tf.int32), modeling.partitioned(CONFIG, 2),
          patch="serial")


def _trained_checkpoint(config, path):
  """Two Adam steps of the sampled-softmax graph, saved (sharded) to path."""
  with tf.Graph().as_default():
    fetches, _ = build_pretraining(config, "sampled", train=True)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(fetches["train_op"])
      session.run(fetches["train_op"])
      return tf.compat.v1.train.Saver(sharded=True).save(session, path)


def _restored_values(config, checkpoint):
  """Restores `checkpoint` into the training graph of `config`; returns
  (unmatched_variables, {checkpoint name: whole value})."""
  with tf.Graph().as_default():
    build_pretraining(config, "sampled", train=True)
    variables = tf.compat.v1.global_variables()
    unmatched = checkpoint_lib.unmatched_variables(variables, checkpoint)
    with tf.compat.v1.Session() as session:
      tf.compat.v1.train.Saver().restore(session, checkpoint)
      values = {name: session.run(layers.whole(
          variable, networks.PARTITION_AXES.get(
              checkpoint_lib.slot_owner(name), 0)))
                for name, (variable, _) in
                checkpoint_lib.saved_variables(variables).items()}
  return unmatched, values


def test_checkpoint_round_trip_through_the_whole_layout(tmp_path):
  split = modeling.partitioned(CONFIG, 3)
  source = _trained_checkpoint(split, str(tmp_path / "model.ckpt"))
  reader = checkpoint_lib.reader(source)
  stored = reader.get_variable_to_shape_map()
  # The Saver keeps the original names: the parts are slices of one tensor.
  assert not [name for name in stored if "part_" in name]
  tables = [name + suffix for name in SPLIT["sampled"]
            for suffix in ("", "/Adam", "/Adam_1")]
  assert checkpoint_lib.stored_slices(source) == {n: 3 for n in tables}
  assert stored["allitem_embeddings"] == [11, 8]
  none = {"graph_only": [], "checkpoint_only": [], "shapes": []}

  summary = repartition_checkpoint.repartition(
      source, str(tmp_path / "whole" / "model.ckpt-2"), 0)
  whole = summary["output"]
  assert summary["tensors"] == len(stored)
  assert checkpoint_lib.stored_slices(whole) == {}
  assert tf.train.latest_checkpoint(str(tmp_path / "whole")) == whole
  unmatched, values = _restored_values(CONFIG, whole)
  assert unmatched == none
  assert sorted(values) == sorted(stored)
  for name, value in values.items():
    np.testing.assert_array_equal(value, reader.get_tensor(name), name)
  assert int(values["global_step"]) == 2

  back = repartition_checkpoint.repartition(
      whole, str(tmp_path / "back" / "model.ckpt-2"), 3)["output"]
  assert (checkpoint_lib.stored_slices(back) ==
          checkpoint_lib.stored_slices(source))
  unmatched, values = _restored_values(split, back)
  assert unmatched == none
  for name, value in values.items():
    np.testing.assert_array_equal(value, reader.get_tensor(name), name)

  # Warm-starting (--init_checkpoint) a partitioned graph from whole tensors.
  with tf.Graph().as_default():
    build_pretraining(split, "sampled")
    saved = checkpoint_lib.saved_variables(tf.compat.v1.global_variables())
    assignment_map, restored = checkpoint_lib.assignment_map_from_checkpoint(
        tf.compat.v1.global_variables(), whole)
    assert restored == set(saved)
    assert len(assignment_map["allitem_embeddings"]) == 3
    tf.compat.v1.train.init_from_checkpoint(whole, assignment_map)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for name in SPLIT["sampled"]:
        np.testing.assert_array_equal(
            session.run(layers.whole(saved[name][0])),
            reader.get_tensor(name), name)

  # TensorFlow reads slices for a whole variable too: the partitioned
  # checkpoint restores into the whole graph as it is.
  unmatched, values = _restored_values(CONFIG, source)
  assert unmatched == none
  np.testing.assert_array_equal(values["softmax_w/Adam"],
                                reader.get_tensor("softmax_w/Adam"))

  with pytest.raises(ValueError, match="already holds a checkpoint"):
    repartition_checkpoint.repartition(source, whole, 0)
  with pytest.raises(ValueError, match="cannot split 11 rows into 12"):
    repartition_checkpoint.repartition(
        source, str(tmp_path / "too_many" / "model.ckpt"), 12)


@pytest.mark.skipif(not local_cluster.can_isolate_network(),
                    reason="needs `unshare --net` (see test_distributed.py)")
def test_cluster_with_two_ps_and_partitions_converts_to_one_process(
    tmp_path):
  from tests import test_distributed  # pylint: disable=g-import-not-at-top
  data_dir = test_reliability.pretrain_data(str(tmp_path))
  model_dir = str(tmp_path / "cluster_model")
  steps = 40
  network = ["--channels=8", "--dilations=1,2", "--train_batch_size=8"]
  code, output = test_distributed.run_launcher(
      ["--data_dir=" + data_dir, "--output_dir=" + model_dir,
       "--num_train_steps=%d" % steps, "--num_workers=1", "--num_ps=2",
       "--timeout=150", "--"] + network + [
           "--num_embedding_partitions=2", "--save_checkpoints_steps=20",
           "--eval_throttle_secs=1", "--log_step_count_steps=10"],
      model_dir, timeout=170)
  assert code == 0, output[-4000:]
  summary = json.loads(output[output.index("{\n"):])
  assert len(summary["cluster"]["ps"]) == 2
  assert summary["returncodes"]["worker_0"] == 0
  latest = summary["checkpoint"]
  step = summary["global_step"]
  assert step >= steps
  tables = [name + suffix for name in SPLIT["sampled"]
            for suffix in ("", "/Adam", "/Adam_1")]
  # The chief's sharded Saver merged the parts of both ps tasks.
  assert checkpoint_lib.stored_slices(latest) == {n: 2 for n in tables}
  with open(os.path.join(model_dir, pretrain.PRETRAIN_CONFIG_FILENAME)) as f:
    assert json.load(f)["num_embedding_partitions"] == 2
  config = modeling.ModelConfig.from_json_file(
      os.path.join(model_dir, modeling.CONFIG_FILENAME))
  assert config.embedding_partitions == 1  # what fine-tuning rebuilds

  whole_dir = str(tmp_path / "whole")
  whole = repartition_checkpoint.repartition(
      latest, os.path.join(whole_dir, os.path.basename(latest)), 0)["output"]
  assert checkpoint_lib.stored_slices(whole) == {}
  assert os.path.exists(os.path.join(whole_dir, modeling.CONFIG_FILENAME))

  # The single-process training graph and the converted checkpoint match
  # one to one, Adam slots included.
  with tf.Graph().as_default():
    model_fn = pretrain.model_fn_builder(config, "sampled", 0.001)
    model_fn({"itemseq": tf.zeros([8, 10], tf.int32)}, None,
             tf.estimator.ModeKeys.TRAIN, None)
    unmatched = checkpoint_lib.unmatched_variables(
        tf.compat.v1.global_variables(), whole)
  assert unmatched == {"graph_only": [], "checkpoint_only": [], "shapes": []}

  options = dict(data_dir=data_dir, output_dir=whole_dir,
                 dilations=["1", "2"], channels=8, train_batch_size=8)
  # Evaluation only: the evaluator's metrics of the same checkpoint.
  metrics = pretrain.run(pretrain.default_options(do_train=False, **options))
  cluster_metrics = summary["metrics"]
  assert metrics["global_step"] == cluster_metrics["global_step"] == step
  for key in ("mrr@5", "hr@5", "ndcg@5", "xent_last"):
    assert metrics[key] == pytest.approx(cluster_metrics[key], abs=1e-6), key
  # Resuming: the Estimator restores every variable (a missing Adam slot
  # fails the restore) and trains on.
  pretrain.run(pretrain.default_options(num_train_steps=step + 2,
                                        do_eval=False, **options))
  resumed = tf.train.latest_checkpoint(whole_dir)
  assert int(tf.train.load_variable(resumed, "global_step")) == step + 2
