"""End to end on the authors' demo: every fine-tuning variant runs.

The demo fine-tuning CSV is converted with the demo pretraining vocabulary
(so its ids are the checkpoints' ids, item_size 175), then
`peterrec_finetune.run` trains a few steps from the authors' NextItNet or
GRec checkpoint, evaluates the whole test split (9 examples in batches of
4: the last partial batch counts) and exports the task patch.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import finetuning
import peterrec_finetune as ft
from ops import checkpoint as checkpoint_lib
from tests import conftest
from tfrecord_tools import convert_csv

NUM_TEST = 9  # 47 examples, test_fraction 0.2


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  conftest.require_path(conftest.DEMO_FINETUNE_CSV)
  conftest.require_checkpoint(conftest.PRETRAIN_CHECKPOINT)
  conftest.require_checkpoint(conftest.CLOZE_CHECKPOINT)
  root = tmp_path_factory.mktemp("demo")
  pretrain = str(root / "pretrain_data")
  finetune = str(root / "finetune_data")
  convert_csv.convert("pretrain", conftest.DEMO_PRETRAIN_CSV, pretrain,
                      test_fraction=0.1, print_summary=False)
  metadata = convert_csv.convert(
      "finetune", conftest.DEMO_FINETUNE_CSV, finetune,
      item_vocab=os.path.join(pretrain, "item_vocab.txt"), test_fraction=0.2,
      print_summary=False)
  assert metadata["item_vocab_size"] == 175
  assert metadata["target_vocab_size"] == 32
  assert metadata["num_test"] == NUM_TEST
  return {"root": root, "finetune": finetune}


def options(demo_data, name, **overrides):
  values = ft.default_options()
  values.update(
      data_dir=demo_data["finetune"],
      output_dir=str(demo_data["root"] / name),
      init_checkpoint=conftest.PRETRAIN_CHECKPOINT, backbone="nextitnet",
      num_train_steps=3, train_batch_size=8, eval_batch_size=4,
      learning_rate=0.005, seed=1, tf_random_seed=1,
      log_step_count_steps=1000, save_summary_steps=1000)
  values.update(overrides)
  return values


def assert_frozen_equal_to_backbone(output_dir, backbone, trained_names,
                                    num_frozen):
  """The fine-tuned checkpoint holds the backbone's values bit for bit."""
  finetuned = tf.train.load_checkpoint(tf.train.latest_checkpoint(output_dir))
  base = tf.train.load_checkpoint(backbone)
  stored = checkpoint_lib.model_variable_shapes(backbone)
  frozen = [n for n in finetuned.get_variable_to_shape_map()
            if n in stored and n not in trained_names]
  assert len(frozen) == num_frozen
  for name in frozen:
    assert (finetuned.get_tensor(name).tobytes() ==
            base.get_tensor(name).tobytes()), name
  for name in trained_names:
    if name in stored:  # e.g. layer_norm2, trained from the pretrained value
      assert not np.array_equal(finetuned.get_tensor(name),
                                base.get_tensor(name)), name


def test_peterrec_serial_export_and_reload(demo_data):
  values = options(demo_data, "peterrec_serial", do_predict=True)
  outputs = ft.run(values)
  out = values["output_dir"]
  metrics = outputs["metrics"]["metrics"]
  assert metrics["num_examples"] == NUM_TEST
  assert set(metrics) == {"mrr@5", "hr@5", "ndcg@5", "loss", "num_examples"}
  with open(os.path.join(out, finetuning.METRICS_FILE)) as f:
    assert json.load(f)["metrics"] == metrics
  with open(os.path.join(out, finetuning.PARAMETERS_FILE)) as f:
    parameters = json.load(f)
  assert parameters["trainable_parameters"] == 37120
  assert parameters["total_parameters"] == 246976
  with open(os.path.join(out, finetuning.PREDICTIONS_FILE)) as f:
    predictions = [json.loads(line) for line in f]
  assert len(predictions) == NUM_TEST
  targets = data_loader.Vocabulary.load(os.path.join(
      demo_data["finetune"], data_loader.TARGET_VOCAB_FILE)).tokens
  assert all(len(p["top_index"]) == 10 and 0 not in p["top_index"] and
             p["top_ids"] == [targets[i] for i in p["top_index"]] and
             p["target"] in targets[1:] for p in predictions)

  # Frozen: the embeddings, 2 convolutions (weight, bias) and layer_norm1
  # (beta, gamma) of each of the 8 blocks.
  assert_frozen_equal_to_backbone(out, conftest.PRETRAIN_CHECKPOINT,
                                  parameters["trained_variables"], 1 + 8 * 6)

  # The task patch: only what was trained, a small fraction of the bytes.
  patch = outputs["task_patch"]
  patch_dir = os.path.join(out, finetuning.TASK_PATCH_DIR)
  stored = checkpoint_lib.model_variable_shapes(
      os.path.join(patch_dir, finetuning.TASK_PATCH_PREFIX))
  assert sorted(stored) == sorted(parameters["trained_variables"])
  assert sum(int(np.prod(s)) for s in stored.values()) == 37120
  # 37120 floats = 148,480 bytes + index: 15% of the model's parameters,
  # and so about 15% of the fine-tuned checkpoint (the best validated one:
  # the model's variables, no optimizer slots), 6% of the authors' backbone
  # checkpoint (which holds Adam slots).
  assert patch["task_patch_bytes"] < 152 * 1024
  assert patch["task_patch_bytes"] < 0.16 * patch["finetuned_checkpoint_bytes"]
  assert patch["task_patch_bytes"] < 0.07 * patch["backbone_checkpoint_bytes"]
  assert patch["backbone_checkpoint"] == os.path.abspath(
      conftest.PRETRAIN_CHECKPOINT)

  # Backbone + patch reproduce the fine-tuned model's metrics exactly.
  reloaded = ft.run(dict(values, task_patch=patch_dir, do_train=False,
                         do_predict=False, method="finecls",
                         tf_random_seed=None))
  assert reloaded["metrics"]["metrics"] == metrics
  assert reloaded["metrics"]["method"] == "peterrec"
  with open(os.path.join(out, finetuning.PATCH_METRICS_FILE)) as f:
    assert json.load(f)["metrics"] == metrics

  # A different backbone is refused.
  with pytest.raises(finetuning.CompatibilityError, match="not the one"):
    finetuning.load_task_patch(patch_dir, conftest.CLOZE_CHECKPOINT)


@pytest.mark.parametrize("method", ["fineall", "finecls", "finelast1",
                                    "finelast2"])
def test_baselines(demo_data, method):
  values = options(demo_data, method, method=method)
  outputs = ft.run(values)
  assert outputs["metrics"]["metrics"]["num_examples"] == NUM_TEST
  expected = {"fineall": 212928, "finecls": 2048, "finelast1": 27008,
              "finelast2": 51968}[method]
  assert outputs["parameters"]["trainable_parameters"] == expected
  num_frozen = {"fineall": 0, "finecls": 1 + 8 * 8, "finelast1": 1 + 7 * 8,
                "finelast2": 1 + 6 * 8}[method]
  assert_frozen_equal_to_backbone(values["output_dir"],
                                  conftest.PRETRAIN_CHECKPOINT,
                                  outputs["parameters"]["trained_variables"],
                                  num_frozen)
  if method == "fineall":  # the whole model is the task artefact
    assert outputs["task_patch"]["backbone_checkpoint"] is None


def test_peterzero_exports_its_random_backbone(demo_data):
  values = options(demo_data, "peterzero", method="peterzero",
                   init_checkpoint=None)
  outputs = ft.run(values)
  assert outputs["parameters"]["trainable_parameters"] == 37120
  patch = outputs["task_patch"]
  assert patch["backbone_checkpoint"].startswith(values["output_dir"])
  reloaded = ft.run(dict(values, task_patch=os.path.join(
      values["output_dir"], finetuning.TASK_PATCH_DIR), do_train=False))
  assert reloaded["metrics"]["metrics"] == outputs["metrics"]["metrics"]


def test_grec_parallel_cardinality(demo_data):
  values = options(demo_data, "grec_parallel",
                   init_checkpoint=conftest.CLOZE_CHECKPOINT, backbone="grec",
                   cardinality=2, distinct_negatives=True,
                   num_eval_negatives=30)
  outputs = ft.run(values)
  assert outputs["parameters"]["unused_parameters"] == 175 * 64
  assert outputs["metrics"]["insertion"] == "parallel"  # grec default
  assert outputs["metrics"]["metrics"]["num_examples"] == NUM_TEST
  # + softmax_w, restored and unused.
  assert_frozen_equal_to_backbone(values["output_dir"],
                                  conftest.CLOZE_CHECKPOINT,
                                  outputs["parameters"]["trained_variables"],
                                  2 + 8 * 6)


def test_causal_parallel_lambdafm_bpr_full_ranking(demo_data):
  values = options(demo_data, "lambdafm", insertion="parallel",
                   sampler="lambdafm", loss="bpr", eval="full", top_k=10)
  outputs = ft.run(values)
  assert outputs["metrics"]["eval"] == "full"
  assert set(outputs["metrics"]["metrics"]) == {
      "mrr@10", "hr@10", "ndcg@10", "loss", "num_examples"}


def test_grec_classification(demo_data):
  # The demo's targets read as class labels: converted as a classification
  # task (fine-tuning refuses a --task that contradicts the dataset's).
  data_dir = str(demo_data["root"] / "classification_data")
  convert_csv.convert(
      "finetune", conftest.DEMO_FINETUNE_CSV, data_dir,
      item_vocab=str(demo_data["root"] / "pretrain_data" / "item_vocab.txt"),
      test_fraction=0.2, task="classification", print_summary=False)
  values = options(demo_data, "classification",
                   init_checkpoint=conftest.CLOZE_CHECKPOINT, backbone="grec",
                   loss="softmax", num_train_steps=2, data_dir=data_dir)
  outputs = ft.run(values)
  metrics = outputs["metrics"]["metrics"]
  assert set(metrics) == {"accuracy", "loss", "num_examples"}
  assert 0.0 <= metrics["accuracy"] <= 1.0


def test_mismatched_data_fails_before_training(demo_data, tmp_path):
  # A fine-tuning set whose source vocabulary was refitted: 13 items, not 175.
  convert_csv.make_finetune_dataset(
      str(tmp_path / "data"), [["a", "b", "c"], ["d", "e", "f"],
                               ["g", "h", "i"], ["j", "k", "l"]],
      [["x"], ["y"], ["x"], ["z"]], test_fraction=0.25)
  values = options(demo_data, "mismatch", data_dir=str(tmp_path / "data"),
                   output_dir=str(tmp_path / "out"))
  with pytest.raises(finetuning.CompatibilityError,
                     match=r"item vocabulary: checkpoint 175, data 13"):
    ft.run(values)
  assert tf.train.latest_checkpoint(str(tmp_path / "out")) is None
