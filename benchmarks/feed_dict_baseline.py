"""(a) The original's way: a feed_dict loop over the graph built by `ops/`.

What the original scripts do, ported: the whole training split is held in a
numpy array, each step slices the next batch, draws what is random in Python
(GRec's masked positions, PeterRec's negative targets) and calls
`sess.run([train_op, loss], feed_dict=...)` in a default `tf.compat.v1.Session`
(default thread settings), over the original's formulation of the graph
(`modeling.ORIGINAL_EXECUTION`: `tf.nn.atrous_conv2d`, layer norm through
`tf.nn.moments`, sparse embedding gradients,
`tf.nn.sampled_softmax_loss`, one chain of ops). Same sizes, math and
variables as the Estimator pipeline: the graph is built by the same
`ops.networks` functions, and the fine-tuning optimizer trains the same
variables as `finetuning.trainable_variables_for`.

Choices that make this baseline *faster* than the original, so that the
ratios are not flattered: only [train_op, loss] is fetched (no argmax
predictions), the batch is a view of a preloaded array, and GRec's masking
uses numpy draws per sequence rather than `random.shuffle` of Python lists.
"""
import numpy as np
import tensorflow as tf

import data_loader
from ops import modeling
from ops import networks
from benchmarks import pipeline
from benchmarks import workloads


def read_int_records(path, features):
  """All records of TFRecord file(s) as numpy int arrays {name: [N, len]}.

  `path`: a file name, glob or list (`data_loader.resolve_input_files`).
  """
  name_to_features = {name: tf.io.FixedLenFeature([length], tf.int64)
                      for name, length in features.items()}
  columns = {name: [] for name in features}
  for record in (record for name in data_loader.resolve_input_files(path)
                 for record in tf.compat.v1.io.tf_record_iterator(name)):
    example = tf.train.Example.FromString(record)
    for name in name_to_features:
      columns[name].append(example.features.feature[name].int64_list.value)
  return {name: np.asarray(values, np.int32)
          for name, values in columns.items()}


class _Loop(object):
  """A session, a train op, and a function producing the next feed_dict."""

  def __init__(self, graph, train_op, loss, next_feed):
    self._graph = graph
    self._fetches = [train_op, loss]
    self._next_feed = next_feed
    with graph.as_default():
      init = tf.compat.v1.global_variables_initializer()
    # The original creates `tf.Session()` as is: default thread settings,
    # here in pools of its own, as if in a process of its own (see
    # pipeline.pin_global_thread_pools).
    self._session = tf.compat.v1.Session(graph=graph,
                                         config=pipeline.own_pools())
    self._session.run(init)
    graph.finalize()

  def run_steps(self, num_steps):
    """Runs `num_steps` training steps; returns the last loss."""
    loss = None
    for _ in range(num_steps):
      _, loss = self._session.run(self._fetches, feed_dict=self._next_feed())
    return loss

  def close(self):
    self._session.close()


class _Batches(object):
  """Consecutive batches over a shuffled in-memory array, as the original."""

  def __init__(self, num_rows, batch_size, rng):
    self._num_rows = num_rows
    self._batch_size = batch_size
    self._rng = rng
    self._order = rng.permutation(num_rows)
    self._next = 0

  def next_indices(self):
    if self._next + self._batch_size > self._num_rows:
      self._order = self._rng.permutation(self._num_rows)
      self._next = 0
    indices = self._order[self._next:self._next + self._batch_size]
    self._next += self._batch_size
    return indices


def mask_batch_numpy(batch, item_size, num_to_predict, rng):
  """GRec masking of one batch in Python, as the original's data provider.

  Per sequence: `num_to_predict` positions without replacement; 80% -> id 0,
  10% kept, 10% a random id in [0, item_size).

  Returns:
    (masked [B, L], positions [B, P], labels [B, P]) int32 arrays.
  """
  masked = batch.copy()
  batch_size, length = batch.shape
  positions = np.zeros([batch_size, num_to_predict], np.int32)
  for row in range(batch_size):
    chosen = np.sort(rng.permutation(length)[:num_to_predict])
    positions[row] = chosen
    for position in chosen:
      draw = rng.random()
      if draw < 0.8:
        masked[row, position] = 0
      elif draw >= 0.9:
        masked[row, position] = rng.integers(0, item_size)
  labels = np.take_along_axis(batch, positions, axis=1)
  return masked, positions, labels


def random_neq(low, high, excluded, rng):
  """The original's `random_neq`: uniform in [low, high) other than `excluded`."""
  value = rng.integers(low, high)
  while value == excluded:
    value = rng.integers(low, high)
  return value


def random_negs(low, high, count, excluded, rng):
  """The original's `random_negs`: `count` draws of `random_neq`."""
  return [random_neq(low, high, excluded, rng) for _ in range(count)]


def pretrain_loop(preset, metadata, encoder, seed=1, softmax="sampled"):
  """(a) for NextItNet ("nextitnet") or GRec ("grec") pretraining.

  softmax: "sampled" (`tf.nn.sampled_softmax_loss`) or "full" (the 1x1
  conv `logits` over every item and the softmax cross-entropy).
  """
  rng = np.random.default_rng(seed)
  train = read_int_records(metadata["paths"]["train"],
                           {"itemseq": metadata["seq_length"]})["itemseq"]
  batches = _Batches(len(train), preset.pretrain_batch, rng)
  causal = encoder == "nextitnet"
  config = workloads.model_config(preset, causal).replace(
      **modeling.ORIGINAL_EXECUTION)
  num_sampled = workloads.default_num_sampled(preset)
  graph = tf.Graph()
  with graph.as_default():
    # The original's placeholders are [None, None].
    itemseq = tf.compat.v1.placeholder(tf.int32, [None, None], "input")
    if causal:
      loss = networks.nextitnet_pretrain(itemseq, config, softmax=softmax,
                                         num_sampled=num_sampled)["loss"]
    else:
      positions = tf.compat.v1.placeholder(tf.int32, [None, None],
                                           "masked_position")
      labels = tf.compat.v1.placeholder(tf.int32, [None, None],
                                        "masked_items")
      loss = networks.grec_pretrain(itemseq, positions, labels, config,
                                    softmax=softmax,
                                    num_sampled=num_sampled)["loss"]
    train_op = tf.compat.v1.train.AdamOptimizer(0.001, beta1=0.9).minimize(
        loss)
  num_predict = workloads.num_predictions(preset)

  def next_feed():
    batch = train[batches.next_indices()]
    if causal:
      return {itemseq: batch}
    masked, masked_positions, masked_labels = mask_batch_numpy(
        batch, preset.num_items, num_predict, rng)
    return {itemseq: masked, positions: masked_positions,
            labels: masked_labels}

  return _Loop(graph, train_op, loss, next_feed)


def loop_for(workload, preset, data, seed=1):
  """(a) for a workloads.Workload."""
  if workload.pretraining:
    return pretrain_loop(preset, data["pretrain"], workload.encoder, seed,
                         workload.softmax)
  return finetune_loop(preset, data["finetune"], workload.insertion, seed)


def finetune_loop(preset, metadata, insertion, seed=1):
  """(a) for PeterRec fine-tuning (causal backbone, BCE, one negative)."""
  rng = np.random.default_rng(seed)
  records = read_int_records(metadata["paths"]["train"],
                             {"source": metadata["source_length"],
                              "target": 1})
  # The causal rows of docs/MODEL.md §1: [source..., 0 ([CLS]), target].
  rows = np.concatenate([records["source"], np.zeros_like(records["target"]),
                         records["target"]], axis=1)
  batches = _Batches(len(rows), preset.finetune_batch, rng)
  target_size = metadata["target_vocab_size"]
  config = workloads.model_config(preset, True).replace(
      **modeling.ORIGINAL_EXECUTION)
  graph = tf.Graph()
  with graph.as_default():
    itemseq = tf.compat.v1.placeholder(tf.int32, [None, None], "input")
    negatives = tf.compat.v1.placeholder(tf.int32, [None], "neg")
    loss, trained = workloads.finetune_loss(
        itemseq[:, :-1], itemseq[:, -1], negatives, config, insertion,
        target_size)
    train_op = tf.compat.v1.train.AdamOptimizer(0.001, beta1=0.9).minimize(
        loss, var_list=trained)

  def next_feed():
    batch = rows[batches.next_indices()]
    negative = [random_neq(1, target_size, t, rng) for t in batch[:, -1]]
    return {itemseq: batch, negatives: negative}

  return _Loop(graph, train_op, loss, next_feed)
