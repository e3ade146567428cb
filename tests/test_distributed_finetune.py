"""Fine-tuning on a real parameter-server cluster (ps, chief, worker, evaluator).

`python -m distributed.local_cluster --script=finetune` launches
peterrec_finetune.py four times with TF_CONFIG on loopback (a private
network namespace, as tests/test_distributed.py). The backbone is a tiny
'pretrained' checkpoint; the test checks every task's return code, the
chief's final global_step, that chief and worker each trained on their own
shard, that the frozen backbone of the fine-tuned checkpoint is the restored
one bit for bit, and that the evaluator validated checkpoints and wrote the
test metrics of the best one with the keys of a single-process run.
The shards themselves are checked without a cluster.
"""
import collections
import json
import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import finetuning
import peterrec_finetune as ft
import training_utils
from distributed import local_cluster
from ops import checkpoint as checkpoint_lib
from ops import heads
from ops import modeling
from tests import test_distributed
from tests import test_reliability

STEPS = 300
FLAGS = ["--method=peterrec", "--channels=8", "--dilations=1,2",
         "--train_batch_size=8", "--eval_batch_size=16",
         "--num_eval_negatives=9", "--validation_fraction=0.2",
         "--learning_rate=0.01", "--seed=1"]


def write_backbone(directory, item_size):
  """A 'pretrained' tiny NextItNet (random values) with model_config.json."""
  config = modeling.ModelConfig(item_size=item_size, channels=8,
                                dilations=[1, 2], kernel_size=3, causal=True)
  os.makedirs(directory)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(7)
    modeling.backbone(tf.zeros([2, 5], tf.int32), config)
    heads.softmax_variables(config.item_size, config.hidden_size)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = saver.save(session, os.path.join(directory, "model.ckpt"),
                          global_step=0)
  with open(os.path.join(directory, modeling.CONFIG_FILENAME), "w") as f:
    f.write(config.to_json_string())
  return prefix


def _options(data_dir, output_dir, backbone, **overrides):
  values = dict(ft.default_options(), data_dir=data_dir, output_dir=output_dir,
                init_checkpoint=backbone, method="peterrec", channels=8,
                dilations=["1", "2"], train_batch_size=8, eval_batch_size=16,
                num_eval_negatives=9, validation_fraction=0.2,
                learning_rate=0.01, seed=1)
  values.update(overrides)
  return values


def _rows(input_fn):
  """The (rows, target) of every example of one pass, as a Counter."""
  found = collections.Counter()
  for batch in input_fn({}):
    for row in batch["rows"].numpy():
      found[tuple(row.tolist())] += 1
  return found


def test_trainers_shards_of_the_masked_rows_are_disjoint_and_cover_them(
    tmp_path):
  rng = np.random.RandomState(0)
  mask = rng.rand(50) < 0.6
  for count in (2, 3):
    parts = [finetuning.trainer_rows(mask, 50, (i, count))
             for i in range(count)]
    assert sum(p.astype(int) for p in parts).tolist() == mask.astype(
        int).tolist()  # disjoint, and together the mask
    sizes = sorted(int(p.sum()) for p in parts)
    assert sizes[-1] - sizes[0] <= 1  # dealt out in turn
  whole = finetuning.trainer_rows(None, 7, (1, 2))
  assert np.flatnonzero(whole).tolist() == [1, 3, 5]
  assert finetuning.trainer_rows(mask, 50, (0, 1)) is mask
  assert finetuning.trainer_rows(None, 50, None) is None
  with pytest.raises(ValueError, match="row_mask has 49 rows"):
    finetuning.trainer_rows(mask[:49], 50, (0, 2))

  # The rows each trainer's input_fn reads: the plan's training rows (its
  # validation split carved out), split in two without overlap.
  data_dir = test_reliability.finetune_world(str(tmp_path))
  f = ft._checked_options(_options(data_dir, str(tmp_path / "out"), None,
                                   method="peterzero"))
  metadata = data_loader.load_metadata(data_dir, data_loader.FINETUNE)
  setup = finetuning.resolve_setup(f, metadata)
  plan, _ = finetuning.plan_training(metadata, f)
  assert plan["num_validation"] > 0 and plan["num_train"] > 0
  masked = _rows(ft.input_fn_builder(f, setup, metadata, split="train",
                                     row_mask=plan["train_mask"]))
  shards = [_rows(ft.input_fn_builder(f, setup, metadata, split="train",
                                      row_mask=plan["train_mask"],
                                      shard=(i, 2))) for i in range(2)]
  assert sum(masked.values()) == plan["num_train"]
  assert shards[0] + shards[1] == masked
  assert {sum(s.values()) for s in shards} == {
      plan["num_train"] // 2, plan["num_train"] - plan["num_train"] // 2}
  validation = _rows(ft.input_fn_builder(f, setup, metadata, split="train",
                                         row_mask=plan["validation_mask"]))
  assert sum(validation.values()) == plan["num_validation"]


@pytest.mark.skipif(
    not local_cluster.can_isolate_network(),
    reason="needs `unshare --net` (a loopback-only network namespace)")
def test_finetune_cluster_trains_validates_and_tests(tmp_path):
  data_dir = test_reliability.finetune_world(str(tmp_path))
  metadata = data_loader.load_metadata(data_dir)
  backbone = write_backbone(str(tmp_path / "pretrained"),
                            metadata["item_vocab_size"])
  model_dir = str(tmp_path / "cluster")
  code, output = test_distributed.run_launcher(
      ["--script=finetune", "--data_dir=" + data_dir,
       "--output_dir=" + model_dir, "--num_train_steps=%d" % STEPS,
       "--num_workers=1", "--num_ps=1", "--timeout=150", "--",
       "--init_checkpoint=" + os.path.dirname(backbone),
       "--eval_every_steps=100", "--log_step_count_steps=5"] + FLAGS,
      model_dir, timeout=170)
  assert code == 0, output[-4000:]
  summary = json.loads(output[output.index("{\n"):])
  assert summary["script"] == "finetune" and summary["private_network"]
  rc = summary["returncodes"]
  assert rc["chief_0"] == rc["worker_0"] == rc["evaluator_0"] == 0
  assert rc["ps_0"] == -signal.SIGTERM  # stopped by the launcher
  assert summary["global_step"] >= STEPS

  # Both trainers trained, each on its half of the training rows.
  logs = os.path.join(model_dir, local_cluster.LOG_DIR)
  text = {}
  for task in ("chief_0", "worker_0", "evaluator_0"):
    with open(os.path.join(logs, task + ".log")) as f:
      text[task] = f.read()
  with open(os.path.join(model_dir, "metrics.json")) as f:
    metrics = json.load(f)
  num_train = metrics["plan"]["num_train"]
  for task, index in (("chief_0", 0), ("worker_0", 1)):
    assert re.search(r"step \d+/%d \(\d+%%\): loss " % STEPS, text[task]), \
        text[task][-2000:]
    assert ("trains on training shard %d of 2: %d of the %d training rows"
            % (index, len(range(index, num_train, 2)), num_train)
            in text[task]), text[task][-2000:]
  assert "worker task 0 done" in text["worker_0"]
  assert "a worker has started training" in text["chief_0"]
  assert "early stopping is single-process only" in text["evaluator_0"]

  # The frozen backbone is the pretrained one, restored (by the chief).
  latest = tf.train.latest_checkpoint(model_dir)
  trained = checkpoint_lib.reader(latest)
  pretrained = checkpoint_lib.reader(backbone)
  with open(os.path.join(model_dir, finetuning.PARAMETERS_FILE)) as f:
    trained_names = set(json.load(f)["trained_variables"])
  frozen = [name for name in pretrained.get_variable_to_shape_map()
            if name not in trained_names and
            name not in finetuning.UNUSED_VARIABLES + ("global_step",)]
  assert "allitem_embeddings" in frozen and len(frozen) > 4
  for name in frozen:
    np.testing.assert_array_equal(trained.get_tensor(name),
                                  pretrained.get_tensor(name), err_msg=name)

  # The evaluator validated checkpoints and tested the best one.
  validation = metrics["validation"]
  steps = [h["step"] for h in validation["history"]]
  assert steps == sorted(set(steps)) and steps[-1] >= STEPS
  assert len(steps) >= 2
  best = validation["best"]
  values = {h["step"]: h["metrics"]["hr@5"] for h in validation["history"]}
  assert best["step"] in values
  assert values[best["step"]] == max(values.values())
  assert metrics["global_step"] == best["step"]
  assert os.path.exists(os.path.join(model_dir, finetuning.BEST_DIR,
                                     best["checkpoint"] + ".index"))
  assert metrics["metrics"]["num_examples"] == metadata["num_test"]
  for name in ("hr@5", "mrr@5", "ndcg@5"):
    assert 0.0 <= metrics["metrics"][name] <= 1.0, name
  assert metrics["metrics"]["hr@5"] >= metrics["metrics"]["mrr@5"]
  with open(os.path.join(model_dir, finetuning.TASK_PATCH_DIR,
                         finetuning.TASK_PATCH_JSON)) as f:
    assert json.load(f)["global_step"] == best["step"]

  # The same files and metrics.json keys as one process writes.
  single_dir = str(tmp_path / "single")
  single = ft.run(_options(data_dir, single_dir, os.path.dirname(backbone),
                           num_train_steps=10, eval_every_steps=5,
                           early_stopping_patience=0))["metrics"]
  assert sorted(metrics) == sorted(single)
  assert sorted(metrics["metrics"]) == sorted(single["metrics"])
  assert sorted(metrics["plan"]) == sorted(single["plan"])
  assert metrics["plan"] == single["plan"]
  assert sorted(validation["history"][0]) == sorted(
      single["validation"]["history"][0])
  for name in (finetuning.PARAMETERS_FILE, finetuning.METRICS_FILE,
               finetuning.TASK_PATCH_DIR, finetuning.BEST_DIR):
    assert os.path.exists(os.path.join(single_dir, name))
    assert os.path.exists(os.path.join(model_dir, name)), name


def test_evaluator_keeps_the_best_checkpoint_and_survives_a_deleted_one(
    tmp_path):
  model_dir = str(tmp_path / "model")
  with tf.Graph().as_default():
    value = tf.compat.v1.get_variable("v", initializer=1.0)
    step = tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver(max_to_keep=10)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefixes = {}
      for at in (10, 20, 30):
        session.run([step.assign(at), value.assign(float(at))])
        prefixes[at] = saver.save(session, os.path.join(model_dir,
                                                        "model.ckpt"),
                                  global_step=at, write_meta_graph=False)
  best_dir = str(tmp_path / "model" / "best")
  logged = []
  exporter = training_utils.BestCheckpointExporter("hr@5", best_dir,
                                                   log=logged.append)
  for path in tf.io.gfile.glob(prefixes[10] + ".*"):  # --keep_checkpoint_max
    os.remove(path)
  for at, hr in ((10, 0.9), (20, 0.5), (30, 0.7), (30, 0.7)):
    exporter.export(None, None, prefixes[at],
                    {"global_step": at, "hr@5": hr, "loss": 1.0}, False)
  with open(os.path.join(best_dir, training_utils.BEST_STATE_FILE)) as f:
    state = json.load(f)
  assert [h["step"] for h in state["history"]] == [10, 20, 30]
  assert state["best"]["step"] == 30  # 10 was gone; 30 beats 20
  assert state["best"]["checkpoint"] == "model.ckpt-30"
  assert "no early stopping" in state["validated"]
  assert sorted(os.listdir(best_dir)) == [
      "best.json", "checkpoint", "model.ckpt-30.data-00000-of-00001",
      "model.ckpt-30.index"]  # 20's copy removed
  assert tf.train.load_variable(os.path.join(best_dir, "model.ckpt-30"),
                                "v") == 30.0
  assert finetuning.selected_checkpoint(model_dir) == os.path.join(
      best_dir, "model.ckpt-30")
  assert "no checkpoint kept yet" in logged[0]
