"""The exported SavedModel gives the Estimator's predictions from raw ids.

A tiny real fine-tuning run exports a SavedModel (`--export_dir`); the test
feeds the test split's users as item-id STRINGS and compares with the
Estimator's `predict` on the same TFRecord rows: identical target ids,
scores equal to float precision. Then `saved_model_cli run` and
`python -m serving predict` run the same SavedModel in subprocesses.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import finetuning
import peterrec_finetune as ft
import serving
from tests import conftest
from tests import test_reliability

ENV = test_reliability.ENV


def finetune_and_export(root, task):
  data_dir = test_reliability.finetune_world(root, task=task)
  output_dir = os.path.join(root, "out_" + task)
  export_dir = os.path.join(output_dir, "saved_model")
  options = dict(
      ft.default_options(), data_dir=data_dir, output_dir=output_dir,
      method="peterzero", channels=8, dilations=["1", "2"], task=task,
      num_train_steps=40, train_batch_size=8, eval_batch_size=7,
      num_eval_negatives=9, learning_rate=0.01, tf_random_seed=1, seed=1,
      do_predict=True, predict_top_k=5, export_dir=export_dir)
  outputs = ft.run(options)
  assert outputs["saved_model"] == export_dir
  metadata = data_loader.load_metadata(data_dir)
  with open(os.path.join(output_dir, finetuning.PREDICTIONS_FILE)) as f:
    estimator_predictions = [json.loads(line) for line in f]
  return metadata, export_dir, estimator_predictions


def source_tokens(metadata):
  """The test split's sources as item strings ("" for the id-0 padding)."""
  items = data_loader.Vocabulary.load(metadata["paths"]["item_vocab"]).tokens
  rows = []
  for record in tf.data.TFRecordDataset(metadata["paths"]["test"]):
    example = tf.train.Example.FromString(record.numpy())
    ids = example.features.feature["source"].int64_list.value
    rows.append([items[i] if i else "" for i in ids])
  return np.array(rows, dtype=object)


@pytest.fixture(scope="module")
def recommendation(tmp_path_factory):
  return finetune_and_export(str(tmp_path_factory.mktemp("rec")),
                             "recommendation")


def test_saved_model_equals_estimator_predictions(recommendation):
  metadata, export_dir, expected = recommendation
  targets = data_loader.Vocabulary.load(
      metadata["paths"]["target_vocab"]).tokens
  users = source_tokens(metadata)
  assert len(users) == len(expected) == metadata["num_test"]
  predictor = serving.Predictor(export_dir)
  try:
    result = predictor(users)
  finally:
    predictor.close()
  want_ids = np.array([p["top_index"] for p in expected])
  np.testing.assert_array_equal(result["top_index"], want_ids)
  np.testing.assert_allclose(result["top_scores"],
                             [p["top_scores"] for p in expected],
                             rtol=1e-5, atol=2e-6)  # the file has 6 digits
  np.testing.assert_array_equal(
      result["top_ids"].astype(str), np.array(targets)[want_ids])
  assert "probabilities" not in result


def test_unknown_item_ids_map_to_id_zero(recommendation):
  metadata, export_dir, _ = recommendation
  users = source_tokens(metadata)[:3]
  unknown = users.copy()
  unknown[unknown == ""] = "never_seen_item"
  unknown[:, 0] = "another_unknown"
  zeros = users.copy()
  zeros[:, 0] = ""
  predictor = serving.Predictor(export_dir)
  try:
    a, b = predictor(unknown), predictor(zeros)
  finally:
    predictor.close()
  np.testing.assert_array_equal(a["top_index"], b["top_index"])
  np.testing.assert_array_equal(a["top_scores"], b["top_scores"])


def test_saved_model_cli_runs_it(recommendation, tmp_path):
  metadata, export_dir, expected = recommendation
  users = source_tokens(metadata)[:4]
  inputs = str(tmp_path / "users.npy")
  np.save(inputs, users.astype(bytes))  # fixed-width bytes, no pickle
  outdir = str(tmp_path / "cli")
  result = subprocess.run(
      [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
       "run", "--dir", export_dir, "--tag_set", "serve",
       "--signature_def", "serving_default",
       "--inputs", "item_ids=" + inputs, "--outdir", outdir],
      cwd=conftest.PROJECT_ROOT, env=ENV, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, timeout=120)
  assert result.returncode == 0, result.stdout[-3000:]
  np.testing.assert_array_equal(
      np.load(os.path.join(outdir, "top_index.npy")),
      [p["top_index"] for p in expected[:4]])
  shown = subprocess.run(
      [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
       "show", "--dir", export_dir, "--all"], cwd=conftest.PROJECT_ROOT,
      env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=120)
  assert "inputs['item_ids'] tensor_info:" in shown.stdout
  assert "dtype: DT_STRING" in shown.stdout


def test_predict_command_on_a_csv(recommendation, tmp_path):
  metadata, export_dir, expected = recommendation
  users = source_tokens(metadata)
  csv_path = str(tmp_path / "users.csv")
  with open(csv_path, "w") as f:
    for index, row in enumerate(users):
      tokens = [t for t in row if t]  # histories of their own lengths
      # Fine-tuning lines (",,targets") are accepted; the targets ignored.
      f.write(",".join(tokens) + (",,t1\n" if index % 2 else "\n"))
  output = str(tmp_path / "predictions.jsonl")
  result = subprocess.run(
      [sys.executable, "-m", "serving", "predict", "--saved_model=" +
       export_dir, "--input_csv=" + csv_path, "--output=" + output,
       "--batch_size=5"], cwd=conftest.PROJECT_ROOT, env=ENV,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=120)
  assert result.returncode == 0, result.stdout[-3000:]
  with open(output) as f:
    lines = [json.loads(line) for line in f]
  targets = data_loader.Vocabulary.load(
      metadata["paths"]["target_vocab"]).tokens
  assert [l["line"] for l in lines] == list(range(1, len(users) + 1))
  # One format: the Estimator's predictions.jsonl and serving's lines name
  # the same targets the same way.
  assert [l["top_ids"] for l in lines] == [p["top_ids"] for p in expected]
  assert [l["top_index"] for l in lines] == [p["top_index"] for p in expected]
  assert [l["top_ids"] for l in lines] == [
      [targets[i] for i in p["top_index"]] for p in expected]
  np.testing.assert_allclose([l["top_scores"] for l in lines],
                             [p["top_scores"] for p in expected],
                             rtol=1e-5, atol=2e-6)


def test_classification_returns_class_probabilities(tmp_path):
  metadata, export_dir, expected = finetune_and_export(str(tmp_path),
                                                       "classification")
  classes = data_loader.Vocabulary.load(
      metadata["paths"]["target_vocab"]).tokens
  predictor = serving.Predictor(export_dir)
  try:
    result = predictor(source_tokens(metadata))
  finally:
    predictor.close()
  probabilities = result["probabilities"]
  assert probabilities.shape == (len(expected), len(classes))
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert np.all(probabilities[:, 0] == 0.0)  # <UNK> is never a class
  # Same ranking of the classes as the Estimator's scores.
  np.testing.assert_array_equal(result["top_index"],
                                [p["top_index"] for p in expected])
  np.testing.assert_allclose(
      result["top_scores"],
      np.take_along_axis(probabilities, result["top_index"], axis=1))
  assert set(result["top_ids"].astype(str).ravel()) <= set(classes[1:])


def test_export_dir_replaced_whole(recommendation, tmp_path):
  """A second export replaces the first in one rename; nothing left over."""
  metadata, export_dir, _ = recommendation
  parent = os.path.dirname(export_dir)
  assert not [n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n]
  with open(os.path.join(export_dir, "assets.extra",
                         serving.SERVING_CONFIG_FILE)) as f:
    config = json.load(f)
  # The checkpoint served is the run's best validated one.
  assert config["checkpoint"] == finetuning.selected_checkpoint(parent)
  assert "/best/model.ckpt-" in config["checkpoint"]
  assert config["source_length"] == metadata["source_length"]


def test_export_later_from_the_output_dir(recommendation, tmp_path):
  """--do_train=false --do_eval=false --export_dir: the same SavedModel."""
  metadata, export_dir, _ = recommendation
  later = str(tmp_path / "later")
  ft.run(dict(ft.default_options(), data_dir=metadata["data_dir"],
              output_dir=os.path.dirname(export_dir), method="peterzero",
              channels=8, dilations=["1", "2"], do_train=False,
              do_eval=False, predict_top_k=5, export_dir=later))
  users = source_tokens(metadata)
  results = []
  for directory in (export_dir, later):
    predictor = serving.Predictor(directory)
    try:
      results.append(predictor(users))
    finally:
      predictor.close()
  for name in ("top_index", "top_scores", "top_ids"):
    np.testing.assert_array_equal(results[0][name], results[1][name])
