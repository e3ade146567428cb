"""nextitnet_pretrain.py: configuration, checkpoint names, warm start, modes.

The convergence and the resume-after-kill tests are in
test_pretrain_convergence.py and test_pretrain_resume.py.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import nextitnet_pretrain as pretrain
import training_utils
from ops import checkpoint as checkpoint_lib
from ops import masking
from ops import modeling
from ops import networks
from tests import conftest
from tfrecord_tools import convert_csv

ENCODER_CASES = [
    # encoder, the authors' checkpoint of that encoder, its output layer
    ("nextitnet", conftest.PRETRAIN_CHECKPOINT, "full"),
    ("grec", conftest.CLOZE_CHECKPOINT, "sampled"),
]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  """The demo pretraining CSV converted (175 ids, the checkpoints' vocab)."""
  conftest.require_path(conftest.DEMO_PRETRAIN_CSV)
  data_dir = str(tmp_path_factory.mktemp("demo_pretrain"))
  metadata = convert_csv.convert(
      "pretrain", conftest.DEMO_PRETRAIN_CSV, data_dir, test_fraction=0.5,
      print_summary=False)
  assert metadata["item_vocab_size"] == 175
  return data_dir


def read_itemseq(path, seq_length):
  """All `itemseq` rows of a TFRecord file: int32 [N, seq_length]."""
  features = {"itemseq": tf.io.FixedLenFeature([seq_length], tf.int64)}
  rows = [tf.io.parse_single_example(record, features)["itemseq"].numpy()
          for record in tf.data.TFRecordDataset(path)]
  return np.stack(rows).astype(np.int32)


def reference_logits(itemseq, config, softmax, checkpoint):
  """Last-item scores from the golden-tested ops, restored, no Estimator."""
  itemseq = np.asarray(itemseq, np.int32)
  if config.causal:
    context = itemseq[:, :-1]
  else:
    context = np.concatenate([itemseq[:, :-1], np.zeros_like(itemseq[:, -1:])],
                             axis=1)
  with tf.Graph().as_default():
    hidden, _ = modeling.backbone(tf.constant(context), config)
    output_layer = networks.pretrain_output_layer(config, softmax)
    logits = networks.item_logits(modeling.last_position(hidden), config,
                                  output_layer)
    assignment_map, restored = checkpoint_lib.assignment_map_from_checkpoint(
        tf.compat.v1.global_variables(), checkpoint)
    assert len(restored) == len(tf.compat.v1.global_variables())
    tf.compat.v1.train.init_from_checkpoint(checkpoint, assignment_map)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return session.run(logits)


def numpy_metrics(logits, labels, k):
  """MRR/HR/NDCG@k with top_k tie semantics, rows with label 0 left out."""
  positive = logits[np.arange(len(labels)), labels][:, None]
  columns = np.arange(logits.shape[1])[None, :]
  rank = np.sum((logits > positive) |
                ((logits == positive) & (columns < labels[:, None])), axis=1)
  keep = labels != 0
  rank = rank[keep]
  hit = rank < k
  return {
      "mrr@%d" % k: np.mean(np.where(hit, 1.0 / (rank + 1), 0.0)),
      "hr@%d" % k: np.mean(hit),
      "ndcg@%d" % k: np.mean(np.where(hit, 1.0 / np.log2(rank + 2), 0.0)),
      "num_examples": int(keep.sum()),
  }


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def test_presets_and_overrides():
  demo = pretrain.resolve_hparams("demo", "nextitnet")
  assert demo == {"channels": 64, "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
                  "kernel_size": 3, "learning_rate": 0.001,
                  "train_batch_size": 2, "num_train_epochs": 2,
                  "softmax": "full"}
  assert pretrain.resolve_hparams("demo", "grec")["softmax"] == "sampled"
  paper = pretrain.resolve_hparams("paper", "grec")
  assert (paper["channels"], paper["train_batch_size"], paper["learning_rate"],
          paper["dilations"], paper["kernel_size"], paper["softmax"]) == (
              256, 32, 0.001, [1, 4, 1, 4, 1, 4, 1, 4], 3, "sampled")
  # Explicit values win; None keeps the preset; flags give strings for lists.
  mixed = pretrain.resolve_hparams(
      "paper", "nextitnet", {"channels": 32, "dilations": ["1", "2"],
                             "train_batch_size": None, "softmax": "full"})
  assert (mixed["channels"], mixed["dilations"], mixed["train_batch_size"],
          mixed["softmax"]) == (32, [1, 2], 32, "full")
  with pytest.raises(ValueError, match="preset"):
    pretrain.resolve_hparams("huge", "grec")
  with pytest.raises(ValueError, match="unknown hyperparameter"):
    pretrain.resolve_hparams("demo", "grec", {"width": 3})


def test_default_options_match_flags():
  settings = pretrain.default_options(encoder="grec")
  assert settings["encoder"] == "grec"
  assert settings["top_k"] == 5 and settings["do_train"] is True
  assert settings["masked_lm_prob"] == 0.3
  assert settings["max_predictions_per_seq"] == 30
  with pytest.raises(ValueError, match="unknown options"):
    pretrain.default_options(batchsize=3)


# ---------------------------------------------------------------------------
# Checkpoints: names, warm start, mismatches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoder, original, softmax", ENCODER_CASES)
def test_checkpoint_names_equal_the_original(demo_data, tmp_path, encoder,
                                             original, softmax):
  conftest.require_path(original + ".index")
  model_dir = str(tmp_path / encoder)
  pretrain.run(pretrain.default_options(
      data_dir=demo_data, output_dir=model_dir, encoder=encoder,
      preset="demo", num_train_steps=1, do_eval=False))
  ours = dict(tf.train.list_variables(model_dir))
  theirs = dict(tf.train.list_variables(original))
  assert ours.pop("global_step") == []
  # Same names (backbone, head, Adam slots, beta powers) and shapes.
  assert sorted(ours) == sorted(theirs)
  for name, shape in theirs.items():
    assert ours[name] == shape, name
  # The model directory describes the run for the fine-tuning script.
  config = modeling.ModelConfig.from_json_file(
      os.path.join(model_dir, modeling.CONFIG_FILENAME))
  assert config.item_size == 175 and config.causal == (encoder == "nextitnet")
  with open(os.path.join(model_dir, pretrain.PRETRAIN_CONFIG_FILENAME)) as f:
    recorded = json.load(f)
  assert recorded["encoder"] == encoder and recorded["softmax"] == softmax
  assert recorded["data"]["item_vocab_size"] == 175
  assert os.path.exists(os.path.join(model_dir, data_loader.ITEM_VOCAB_FILE))


@pytest.mark.parametrize("encoder, checkpoint, softmax", ENCODER_CASES)
def test_warm_start_reproduces_golden_tested_graph(demo_data, tmp_path,
                                                   encoder, checkpoint,
                                                   softmax):
  """--init_checkpoint, --do_train=false: the same top-5 and metrics."""
  conftest.require_path(checkpoint + ".index")
  model_dir = str(tmp_path / encoder)
  metrics = pretrain.run(pretrain.default_options(
      data_dir=demo_data, output_dir=model_dir, encoder=encoder,
      preset="demo", init_checkpoint=checkpoint, do_train=False,
      do_predict=True,
      eval_batch_size=4,  # 15 test rows: 3 full batches and a partial one.
      top_k=50))  # The toy checkpoints rarely hit the top 5: compare more.
  metadata = data_loader.load_metadata(demo_data)
  itemseq = read_itemseq(metadata["paths"]["test"], metadata["seq_length"])
  config = modeling.ModelConfig.from_json_file(
      os.path.join(model_dir, modeling.CONFIG_FILENAME))
  logits = reference_logits(itemseq, config, softmax, checkpoint)

  expected = numpy_metrics(logits, itemseq[:, -1], 50)
  assert metrics["global_step"] == 0  # nothing was trained
  assert metrics["num_examples"] == expected["num_examples"] == len(itemseq)
  assert expected["hr@50"] > 0  # a comparison of more than zeros
  for name in ("mrr@50", "hr@50", "ndcg@50"):
    assert metrics[name] == pytest.approx(expected[name], abs=1e-6), name
  shifted = logits - logits.max(axis=1, keepdims=True)
  xent = -(shifted[np.arange(len(itemseq)), itemseq[:, -1]] -
           np.log(np.exp(shifted).sum(axis=1)))
  assert metrics["xent_last"] == pytest.approx(xent.mean(), rel=1e-5)
  with open(os.path.join(model_dir, pretrain.METRICS_FILENAME)) as f:
    assert json.load(f)["hr@50"] == pytest.approx(metrics["hr@50"])

  with open(os.path.join(model_dir, pretrain.PREDICTIONS_FILENAME)) as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
  assert len(rows) == len(itemseq)
  predicted = np.array([[int(i) for i in row[4].split()] for row in rows])
  # Same top-5 (and top-50) as the golden-tested graph; ties by lower id.
  np.testing.assert_array_equal(
      predicted, np.argsort(-logits, axis=1, kind="stable")[:, :50])
  np.testing.assert_array_equal([int(row[1]) for row in rows], itemseq[:, -1])
  # No checkpoint was written: evaluation ran on the warm-started values.
  assert tf.train.latest_checkpoint(model_dir) is None


def test_estimator_predict_matches_golden_file(tmp_path):
  """The Estimator path on the golden inputs gives the golden top-5."""
  golden_path = os.path.join(conftest.GOLDEN_DIR, "nextitnet_causal.npz")
  conftest.require_path(golden_path, "PETERREC_GOLDEN_DIR")
  conftest.require_path(conftest.PRETRAIN_CHECKPOINT + ".index")
  golden = np.load(golden_path)
  itemseq = golden["itemseq"]
  record_path = str(tmp_path / "golden.tfrecord")
  with tf.io.TFRecordWriter(record_path) as writer:
    for row in itemseq:
      feature = {"itemseq": tf.train.Feature(
          int64_list=tf.train.Int64List(value=row.tolist()))}
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())
  config = modeling.ModelConfig(item_size=175)
  estimator = training_utils.make_estimator(
      pretrain.model_fn_builder(config, "full", 0.001,
                                init_checkpoint=conftest.PRETRAIN_CHECKPOINT),
      str(tmp_path / "model"))
  input_fn = pretrain.input_fn_builder(record_path, itemseq.shape[1], 2, False,
                                       "nextitnet", 175)
  predictions = list(estimator.predict(input_fn))
  top5 = np.stack([p["top_k_ids"] for p in predictions])
  np.testing.assert_array_equal(top5, golden["top5"])
  scores = np.stack([p["top_k_scores"] for p in predictions])
  np.testing.assert_allclose(
      scores, np.take_along_axis(golden["logits_last"], golden["top5"], 1),
      rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_vocabulary_fails_before_training(tmp_path):
  conftest.require_path(conftest.PRETRAIN_CHECKPOINT + ".index")
  data_dir = str(tmp_path / "data")
  convert_csv.make_pretrain_dataset(
      data_dir, [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], test_fraction=0.0)
  with pytest.raises(ValueError, match=r"item vocabulary of 175 ids.*"
                     r"item_vocab_size 7"):
    pretrain.run(pretrain.default_options(
        data_dir=data_dir, output_dir=str(tmp_path / "model"),
        init_checkpoint=conftest.PRETRAIN_CHECKPOINT))
  assert not os.path.exists(str(tmp_path / "model"))


def test_checkpoint_of_other_channels_fails(demo_data, tmp_path):
  conftest.require_path(conftest.PRETRAIN_CHECKPOINT + ".index")
  with pytest.raises(ValueError, match=r"64 channels.*32 channels"):
    pretrain.run(pretrain.default_options(
        data_dir=demo_data, output_dir=str(tmp_path / "model"), channels=32,
        init_checkpoint=conftest.PRETRAIN_CHECKPOINT))
  with pytest.raises(ValueError, match="dilated_conv1/weight"):
    pretrain.check_init_checkpoint(
        conftest.PRETRAIN_CHECKPOINT,
        modeling.ModelConfig(item_size=175, kernel_size=5), "full")


def test_model_dir_of_another_configuration_is_refused(demo_data, tmp_path):
  model_dir = str(tmp_path / "model")
  settings = pretrain.default_options(
      data_dir=demo_data, output_dir=model_dir, channels=8, dilations=[1],
      preset="demo", do_train=False, do_eval=False)
  pretrain.run(settings)
  with pytest.raises(ValueError, match=r"another configuration.*channels: 8 "
                     r"-> 16"):
    pretrain.run(dict(settings, channels=16))
  with pytest.raises(ValueError, match="softmax: 'full' -> 'sampled'"):
    pretrain.run(dict(settings, softmax="sampled"))


# ---------------------------------------------------------------------------
# model_fn and input_fn directly
# ---------------------------------------------------------------------------


def test_model_fn_modes_grec_synthetic():
  config = modeling.ModelConfig(item_size=30, channels=8, dilations=[1, 2],
                                causal=False)
  model_fn = pretrain.model_fn_builder(config, "sampled", 0.01, top_k=3)
  itemseq = np.random.RandomState(0).randint(1, 30, size=[4, 6])
  with tf.Graph().as_default():
    features = {"itemseq": tf.constant(itemseq, tf.int32)}
    masked, positions, labels = masking.mask_items(
        features["itemseq"], 30, seed=1)
    features.update(masked_itemseq=masked, masked_positions=positions,
                    masked_labels=labels)
    spec = model_fn(features, None, tf.estimator.ModeKeys.TRAIN, {})
    assert spec.loss.shape.ndims == 0 and spec.train_op is not None
    names = {checkpoint_lib.variable_name(v)
             for v in tf.compat.v1.global_variables()}
    assert {"softmax_w", "softmax_b", "beta1_power", "beta2_power",
            "softmax_w/Adam", "softmax_w/Adam_1",
            "allitem_embeddings/Adam"} <= names
  for mode in (tf.estimator.ModeKeys.EVAL, tf.estimator.ModeKeys.PREDICT):
    with tf.Graph().as_default():
      tf.compat.v1.train.get_or_create_global_step()
      spec = model_fn({"itemseq": tf.constant(itemseq, tf.int32)}, None,
                      mode, {})
      with tf.compat.v1.Session() as session:
        session.run([tf.compat.v1.global_variables_initializer(),
                     tf.compat.v1.local_variables_initializer()])
        if mode == tf.estimator.ModeKeys.EVAL:
          assert set(spec.eval_metric_ops) == {
              "mrr@3", "hr@3", "ndcg@3", "xent_last", "num_examples"}
          session.run({k: v[1] for k, v in spec.eval_metric_ops.items()})
          values = session.run({k: v[0]
                                for k, v in spec.eval_metric_ops.items()})
          assert values["num_examples"] == 4
          assert 0.0 <= values["mrr@3"] <= values["hr@3"] <= 1.0
        else:
          out = session.run(spec.predictions)
          assert out["top_k_ids"].shape == (4, 3)
          np.testing.assert_array_equal(out["label"], itemseq[:, -1])


def test_grec_training_input_is_masked_and_static(demo_data):
  metadata = data_loader.load_metadata(demo_data)
  input_fn = pretrain.input_fn_builder(
      metadata["paths"]["train"], metadata["seq_length"], 4, True, "grec",
      175, seed=3)
  dataset = input_fn({})
  spec = dataset.element_spec
  assert spec["masked_itemseq"].shape.as_list() == [4, 9]
  assert spec["masked_positions"].shape.as_list() == [4, 3]  # round(2.7)
  batch = next(iter(dataset))
  original = batch["itemseq"].numpy()
  labels = batch["masked_labels"].numpy()
  positions = batch["masked_positions"].numpy()
  np.testing.assert_array_equal(
      labels, np.take_along_axis(original, positions, axis=1))
  # The eval pipeline is the plain sequences, last partial batch kept.
  eval_fn = pretrain.input_fn_builder(
      metadata["paths"]["test"], metadata["seq_length"], 4, False, "grec", 175)
  sizes = [b["itemseq"].shape[0] for b in eval_fn({})]
  assert sum(sizes) == metadata["num_test"] and set(eval_fn({}).element_spec)\
      == {"itemseq"}


def test_grec_positional_embedding_option(demo_data, tmp_path):
  model_dir = str(tmp_path / "pos")
  metrics = pretrain.run(pretrain.default_options(
      data_dir=demo_data, output_dir=model_dir, encoder="grec", channels=8,
      dilations=[1, 2], has_positional_embedding=True, max_position=20,
      train_batch_size=4, num_train_steps=2))
  assert metrics["global_step"] == 2
  shapes = dict(tf.train.list_variables(model_dir))
  assert shapes["dec_pos/lookup_table_position"] == [20, 8]
  assert shapes["softmax_w"] == [175, 16]  # the concatenation doubles C
  with pytest.raises(ValueError, match="GRec option"):
    pretrain.run(pretrain.default_options(
        data_dir=demo_data, output_dir=str(tmp_path / "causal"),
        has_positional_embedding=True))
  with pytest.raises(ValueError, match="max_position 5 is shorter"):
    pretrain.run(pretrain.default_options(
        data_dir=demo_data, output_dir=str(tmp_path / "short"), encoder="grec",
        has_positional_embedding=True, max_position=5))


def test_resuming_ignores_how_the_graph_computes_not_what(tmp_path):
  config = modeling.ModelConfig(item_size=10, channels=8, dilations=[1, 2])
  pretrain_config = {"encoder": "nextitnet", "softmax": "full"}
  pretrain.write_output_dir_files(str(tmp_path), config, pretrain_config, None)
  # Every execution field changed at once: the checkpoint still restores.
  pretrain.write_output_dir_files(
      str(tmp_path), config.replace(
          **dict(modeling.ORIGINAL_EXECUTION, towers=3)),
      pretrain_config, None)
  with pytest.raises(ValueError, match=r"channels: 8 -> 16"):
    pretrain.write_output_dir_files(str(tmp_path), config.replace(channels=16),
                                   pretrain_config, None)
