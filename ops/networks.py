"""Whole networks assembled from the ops: pretraining and PeterRec graphs.

These are the graphs of the original model classes (`generator_*.py`), as
functions of tensors, so the scripts, the benchmarks and the golden tests
build exactly the same thing.
"""
import tensorflow as tf

from ops import heads
from ops import layers
from ops import modeling

SOFTMAX_TYPES = ("sampled", "full")
# The variables ModelConfig.embedding_partitions splits, with the axis they
# are split along (their Adam slots are split the same way): the item
# table and every pretraining output layer (modeling.partitioned).
PARTITION_AXES = {
    "allitem_embeddings": 0,
    "softmax_w": 0,
    "softmax_b": 0,
    "logits/weight": 3,
    "logits/bias": 0,
}
# Fewest predicted positions per tower of the sampled-softmax head.
MIN_HEAD_TOWER_ROWS = 64


def pretrain_output_layer(config, softmax):
  """Creates the pretraining output variables.

  sampled: `softmax_w` [item_size, width], `softmax_b` [item_size] (the
  default script and the GRec checkpoint), in config.embedding_partitions
  parts. full: none here; the 1x1 conv `logits` is created on first use
  (the authors' NextItNet demo checkpoint).

  Returns:
    (softmax_w, softmax_b), or None for the full softmax.
  """
  if softmax not in SOFTMAX_TYPES:
    raise ValueError("softmax must be one of %s, got %r" %
                     (SOFTMAX_TYPES, softmax))
  if softmax == "sampled":
    return heads.softmax_variables(config.item_size, config.hidden_size,
                                   partitions=config.embedding_partitions)
  return None


def item_logits(vectors, config, output_layer):
  """Scores of every item for each hidden vector.

  Args:
    vectors: float32 [N, width], or [B, L, width] (N = B * L rows).
    config: ModelConfig.
    output_layer: result of pretrain_output_layer.

  Returns:
    float32 [N, item_size].
  """
  if output_layer is not None:
    softmax_w, softmax_b = output_layer
    return heads.output_logits(vectors, softmax_w, softmax_b)
  # The original applies its 1x1 conv to [B, L, width] (one 1 x L image per
  # sequence); [N, 1, width] gives the same values, but the atrous and conv2d
  # kernels run N one-pixel images several times slower.
  sequences = vectors if vectors.shape.ndims == 3 else tf.expand_dims(
      vectors, 1)
  logits = heads.full_softmax_logits(
      sequences, config.item_size,
      conv_implementation=config.conv_implementation,
      partitions=config.embedding_partitions)
  return tf.reshape(logits, [-1, config.item_size])


def item_loss(vectors, labels, config, output_layer, num_sampled, seed=None):
  """Training loss of predicting `labels` from `vectors`.

  Sampled softmax when the output layer is `softmax_w`/`softmax_b`, the full
  softmax cross-entropy otherwise.

  Args:
    vectors: float32 [N, width]; labels: int [N].
    num_sampled: int, negatives of the sampled softmax.
  """
  towers = modeling.num_towers(
      config, layers.get_shape_list(vectors, expected_rank=2)[0],
      min_rows=MIN_HEAD_TOWER_ROWS)
  if output_layer is not None:
    softmax_w, softmax_b = output_layer
    return heads.sampled_softmax_loss(
        vectors, labels, softmax_w, softmax_b, num_sampled, seed=seed,
        implementation=config.softmax_implementation,
        embedding_gradients=config.embedding_gradients, towers=towers)
  # The [N, item_size] logits and their cross-entropy, the largest part of a
  # full-softmax step, in row blocks side by side (one per core; G10).
  return tf.reduce_mean(tf.concat([
      heads.full_softmax_losses(item_logits(rows, config, None), row_labels)
      for rows, row_labels in zip(layers.split_rows(vectors, towers),
                                  layers.split_rows(labels, towers))], 0))


def nextitnet_pretrain(itemseq, config, softmax="sampled", num_sampled=None,
                       seed=None):
  """NextItNet (causal): every position predicts the next item.

  Args:
    itemseq: int32 [batch_size, seq_length]; context = itemseq[:, :-1],
      labels = itemseq[:, 1:].
    config: ModelConfig with causal=True.
    softmax: "sampled" or "full".
    num_sampled: negatives of the sampled softmax (default 20% of the items).

  Returns:
    dict: loss (scalar), hidden [B, T-1, width], last_logits [B, item_size]
    (prediction of the item after the context's last position).
  """
  if num_sampled is None:
    num_sampled = heads.default_num_sampled(config.item_size)
  hidden, _ = modeling.backbone(itemseq[:, :-1], config)
  output_layer = pretrain_output_layer(config, softmax)
  if output_layer is None and config.conv_implementation != "matmul":
    # The full softmax's conv over whole sequences, as the original.
    loss = heads.full_softmax_loss(item_logits(hidden, config, None),
                                   tf.reshape(itemseq[:, 1:], [-1]))
  else:
    loss = item_loss(tf.reshape(hidden, [-1, config.hidden_size]),
                     tf.reshape(itemseq[:, 1:], [-1]), config, output_layer,
                     num_sampled, seed)
  last_logits = item_logits(modeling.last_position(hidden), config,
                            output_layer)
  return {"loss": loss, "hidden": hidden, "last_logits": last_logits}


def grec_pretrain(masked_itemseq, masked_positions, masked_labels, config,
                  softmax="sampled", num_sampled=None, seed=None):
  """GRec encoder (non-causal): predict the items at the masked positions.

  Args:
    masked_itemseq: int32 [batch_size, seq_length], masked input.
    masked_positions: int32 [batch_size, num_masked].
    masked_labels: int32 [batch_size, num_masked], the original items.
    config: ModelConfig with causal=False.

  Returns:
    dict: loss, hidden [B, T, width], last_logits [B, item_size] (scores of
    the last position, used to predict a masked last item).
  """
  if num_sampled is None:
    num_sampled = heads.default_num_sampled(config.item_size)
  hidden, _ = modeling.backbone(masked_itemseq, config)
  output_layer = pretrain_output_layer(config, softmax)
  vectors = heads.gather_indexes(hidden, masked_positions)
  loss = item_loss(vectors, tf.reshape(masked_labels, [-1]), config,
                   output_layer, num_sampled, seed)
  last_logits = item_logits(modeling.last_position(hidden), config,
                            output_layer)
  return {"loss": loss, "hidden": hidden, "last_logits": last_logits}


def peterrec_user_vectors(context, config, patch, cardinality=1,
                          cls_at_start=False, pooling="cls"):
  """The backbone with model patches and the user representation.

  The non-causal graph also creates `softmax_w` (never used), as the
  original does, so that its checkpoint restores without unmatched names.

  Args:
    context: int32 [batch_size, seq_length]: rows[:, :-1] of the row layout (docs/MODEL.md §1).
    config: ModelConfig.
    patch: None (no patches: FineAll/FineCLS/FineLast), "serial", "parallel".
    cardinality: branches of each patch.
    cls_at_start: causal only: the `[CLS]` slot is position 0 (ablation).
    pooling: "cls" (the `[CLS]` state, the original) or "mean" (the mean of
      every position's state).

  Returns:
    (user_vectors [batch_size, width], hidden [batch_size, seq_length, width]).

  Raises:
    ValueError: config.embedding_partitions > 1. Fine-tuning runs in one
      process and selects variables by name; it builds whole tables (a
      partitioned pretraining checkpoint restores into them as it is).
  """
  if config.embedding_partitions > 1:
    raise ValueError(
        "the fine-tuning graph builds whole item tables, got "
        "ModelConfig.embedding_partitions=%d: partitioning is a pretraining "
        "option (its checkpoints restore unpartitioned as they are); use "
        "modeling.unpartitioned(config)" % config.embedding_partitions)
  hidden, _ = modeling.backbone(context, config, patch=patch,
                                cardinality=cardinality)
  if not config.causal:
    heads.softmax_variables(config.item_size, config.hidden_size,
                            with_bias=False)
  return (modeling.user_representation(hidden, config.causal, cls_at_start,
                                      pooling), hidden)
