r"""Serving a fine-tuned PeterRec model: SavedModel export and batch predict.

The SavedModel takes raw item-id strings, so a client needs no vocabulary:

  signature "serving_default"
    inputs:  item_ids  string [batch, source_length]  a user's source items,
             in the order of the fine-tuning CSV; shorter histories are
             right-padded with "" (the converter pads with id 0, and "" and
             any unknown item look up as id 0, `<UNK>`).
    outputs: top_ids     string [batch, k]  target ids (or class labels),
                                            best first
             top_scores  float  [batch, k]  recommendation: the dot-product
                                            scores of the model; classification:
                                            class probabilities
             top_index   int32  [batch, k]  the same targets as ids of
                                            target_vocab.txt
             probabilities float [batch, T] classification only: every class
                                            (column 0, <UNK>, is 0)

Inside the graph: a `tf.lookup.StaticHashTable` over the pretraining item
vocabulary (the tokens are a graph constant: the SavedModel is
self-contained) -> the row layout (docs/MODEL.md §1) (`[source..., 0]`, non-causal
`[0, source..., 0]`) -> the fine-tuned network, with the variables of the
fine-tuned checkpoint -> scores of every target (id 0 masked) -> top-k,
mapped back to target strings.

Export (the fine-tuning script does it after training with --export_dir;
or later, from the fine-tuning output directory):

  python peterrec_finetune.py ... --export_dir=runs/demo_peterrec/saved_model

Predict on a CSV of user histories (`i1,i2,...`; a fine-tuning line's
`,,targets` part is ignored), one JSON line per user:

  python -m serving predict --saved_model=runs/demo_peterrec/saved_model \
      --input_csv=users.csv --output=predictions.jsonl

`saved_model_cli show --dir ... --all` lists the signature;
`saved_model_cli run --dir ... --tag_set serve --signature_def
serving_default --inputs item_ids=batch.npy` runs it.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
import finetuning
import training_utils
from ops import finetune as finetune_ops

SERVING_INPUT = "item_ids"
SIGNATURE = tf.compat.v1.saved_model.signature_constants.\
    DEFAULT_SERVING_SIGNATURE_DEF_KEY
TAG = tf.compat.v1.saved_model.tag_constants.SERVING
SERVING_CONFIG_FILE = "serving_config.json"  # in assets.extra/


def build_serving_graph(config, method, insertion, cardinality, task,
                        item_tokens, target_tokens, source_length, top_k):
  """Builds the serving graph in the default graph.

  Args:
    config: modeling.ModelConfig of the backbone.
    method, insertion, cardinality: as the fine-tuning run.
    task: "recommendation" or "classification".
    item_tokens: list of str, entry i the item of id i (item_vocab.txt).
    target_tokens: list of str, entry i the target/class of id i.
    source_length: int, metadata source_length.
    top_k: targets returned per user (at most target_vocab_size - 1).

  Returns:
    (inputs {name: Tensor}, outputs {name: Tensor}).
  """
  item_ids = tf.compat.v1.placeholder(tf.string, [None, source_length],
                                      name=SERVING_INPUT)
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(item_tokens, tf.string),
          tf.range(len(item_tokens), dtype=tf.int64)),
      default_value=0, name="item_vocabulary")
  source = tf.cast(table.lookup(item_ids), tf.int32)
  # The training layout with a dummy target, minus the target column.
  rows = data_loader.finetune_rows(source, tf.zeros_like(source[:, 0]),
                                   config.causal)
  user, target_table = finetuning.build_finetune_model(
      rows[:, :-1], config, method, insertion, cardinality,
      len(target_tokens))
  scores = finetune_ops.target_scores(user, target_table)
  k = min(top_k, len(target_tokens) - 1)
  outputs = {}
  if task == "classification":
    probabilities = tf.nn.softmax(scores, axis=-1)
    outputs["probabilities"] = probabilities
    top_scores, top_index = tf.nn.top_k(probabilities, k=k)
  else:
    top_scores, top_index = tf.nn.top_k(scores, k=k)
  outputs.update(
      top_ids=tf.gather(tf.constant(target_tokens, tf.string), top_index),
      top_scores=top_scores, top_index=top_index)
  return {SERVING_INPUT: item_ids}, outputs


def export_saved_model(export_dir, checkpoint, config, method, insertion,
                       cardinality, task, item_vocab_path, target_vocab_path,
                       source_length, top_k=10):
  """Writes a SavedModel of the fine-tuned model at `checkpoint`.

  Written into a temporary directory next to `export_dir` and renamed into
  place, so `export_dir` is never half-written (an existing one is
  replaced).

  Returns:
    export_dir.
  """
  item_tokens = data_loader.Vocabulary.load(item_vocab_path).tokens
  target_tokens = data_loader.Vocabulary.load(target_vocab_path).tokens
  if len(item_tokens) != config.item_size:
    raise finetuning.CompatibilityError(
        "%s has %d items, the model %d" % (item_vocab_path, len(item_tokens),
                                            config.item_size))
  staging = training_utils.staging_dir(export_dir)
  tf.io.gfile.rmtree(staging)  # the Builder wants to create it
  with tf.Graph().as_default() as graph:
    # Initializers are never run (restored), but op determinism refuses
    # unseeded random ops.
    tf.compat.v1.set_random_seed(0)
    inputs, outputs = build_serving_graph(
        config, method, insertion, cardinality, task, item_tokens,
        target_tokens, source_length, top_k)
    saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
    with tf.compat.v1.Session(graph=graph) as session:
      saver.restore(session, checkpoint)
      builder = tf.compat.v1.saved_model.Builder(staging)
      builder.add_meta_graph_and_variables(
          session, [TAG],
          signature_def_map={
              SIGNATURE: tf.compat.v1.saved_model.predict_signature_def(
                  inputs, outputs)},
          main_op=tf.compat.v1.tables_initializer(),
          strip_default_attrs=True)
      builder.save()
  training_utils.write_json_atomic(
      os.path.join(staging, "assets.extra", SERVING_CONFIG_FILE), {
          "checkpoint": data_loader.absolute_path(checkpoint), "task": task,
          "method": method, "source_length": source_length, "top_k": top_k,
          "item_vocab_size": len(item_tokens),
          "target_vocab_size": len(target_tokens),
          "model_config": config.to_dict()})
  training_utils.replace_dir(staging, export_dir)
  logging.info("Exported the SavedModel of %s to %s", checkpoint, export_dir)
  return export_dir


class Predictor(object):
  """Runs the serving signature of an exported SavedModel in a session."""

  def __init__(self, saved_model):
    self._graph = tf.Graph()
    self._session = tf.compat.v1.Session(graph=self._graph)
    meta_graph = tf.compat.v1.saved_model.loader.load(
        self._session, [TAG], saved_model)
    signature = meta_graph.signature_def[SIGNATURE]
    self._input = signature.inputs[SERVING_INPUT].name
    self.source_length = signature.inputs[
        SERVING_INPUT].tensor_shape.dim[1].size
    self._outputs = {name: info.name
                     for name, info in signature.outputs.items()}

  def __call__(self, item_ids):
    """item_ids: str array [B, source_length] -> {output name: array}."""
    return self._session.run(self._outputs, {self._input: item_ids})

  def pad(self, histories):
    """Lists of tokens -> str array [B, source_length].

    The first `source_length` items are kept and shorter lists are
    right-padded with "", exactly as the converter builds the training
    rows (VocabularyProcessor semantics).
    """
    batch = np.full([len(histories), self.source_length], "", dtype=object)
    for row, tokens in enumerate(histories):
      tokens = tokens[:self.source_length]
      batch[row, :len(tokens)] = tokens
    return batch

  def close(self):
    self._session.close()


def read_histories(path):
  """A CSV of user histories -> list of token lists (`,,targets` ignored)."""
  histories = []
  for n, text in data_loader.iter_text_lines(path):
    source = text.split(data_loader.FINETUNE_SEPARATOR, 1)[0]
    histories.append(data_loader.split_fields(source, "history", path, n,
                                              text))
  return histories


def predict_csv(saved_model, input_csv, output, batch_size=256):
  """Writes one JSON line per CSV line.

  {"line", "top_ids" (target tokens), "top_index" (their ids in the target
  vocabulary), "top_scores"}: the format of peterrec_finetune --do_predict.

  Written to a temporary file and renamed. Returns the number of users.
  """
  histories = read_histories(input_csv)
  predictor = Predictor(saved_model)
  lines = []
  try:
    for start in range(0, len(histories), batch_size):
      chunk = histories[start:start + batch_size]
      result = predictor(predictor.pad(chunk))
      for i in range(len(chunk)):
        record = {
            "line": start + i + 1,
            "top_ids": [t.decode("utf-8") for t in result["top_ids"][i]],
            "top_index": [int(j) for j in result["top_index"][i]],
            "top_scores": [float(s) for s in result["top_scores"][i]],
        }
        lines.append(json.dumps(record))
  finally:
    predictor.close()
  training_utils.write_text_atomic(output, "".join(l + "\n" for l in lines))
  return len(histories)


def define_flags(flag_values=flags.FLAGS):
  fv = flag_values
  flags.DEFINE_string("saved_model", None, "A SavedModel directory written "
                      "by peterrec_finetune.py --export_dir.", flag_values=fv)
  flags.DEFINE_string("input_csv", None, "User histories, one a line: "
                      "i1,i2,... (a fine-tuning line's ,,targets part is "
                      "ignored).", flag_values=fv)
  flags.DEFINE_string("output", None, "JSON lines, one per user: line, "
                      "top_ids, top_scores.", flag_values=fv)
  flags.DEFINE_integer("batch_size", 256, "Users per session run.",
                       flag_values=fv)


def main(argv):
  if len(argv) != 2 or argv[1] != "predict":
    sys.exit("usage: python -m serving predict --saved_model=DIR "
             "--input_csv=FILE --output=FILE")
  logging.set_verbosity(logging.INFO)
  try:
    count = predict_csv(flags.FLAGS.saved_model, flags.FLAGS.input_csv,
                        flags.FLAGS.output, flags.FLAGS.batch_size)
  except data_loader.DatasetError as e:
    sys.exit("error: %s" % e)
  print("Wrote %d predictions to %s" % (count, flags.FLAGS.output))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["saved_model", "input_csv", "output"])
  app.run(main)
