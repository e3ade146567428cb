"""Pretraining graph pieces: the training loss and the full-ranking evaluation.

The networks are `networks.nextitnet_pretrain` / `networks.grec_pretrain`;
here are what the pretraining `model_fn` computes from them (docs/MODEL.md
section 3 describes the protocol).
"""
import tensorflow as tf

from ops import metrics as metrics_lib
from ops import modeling
from ops import networks

LOSS_NAME = "pretrain_loss"


def training_loss(features, config, softmax, num_sampled):
  """The pretraining loss, a scalar named LOSS_NAME (read by progress hooks).

  Args:
    features: NextItNet: "itemseq" int32 [B, L]; GRec: "masked_itemseq"
      int32 [B, L], "masked_positions" and "masked_labels" int32 [B, P].
    config: modeling.ModelConfig; config.causal selects NextItNet.
    softmax: "sampled" or "full".
    num_sampled: negatives of the sampled softmax.
  """
  if config.causal:
    outputs = networks.nextitnet_pretrain(
        features["itemseq"], config, softmax=softmax, num_sampled=num_sampled)
  else:
    outputs = networks.grec_pretrain(
        features["masked_itemseq"], features["masked_positions"],
        features["masked_labels"], config, softmax=softmax,
        num_sampled=num_sampled)
  return tf.identity(outputs["loss"], name=LOSS_NAME)


def evaluation_logits(itemseq, config, softmax):
  """Scores of every item for the held-out last item of each sequence.

  NextItNet: the backbone over itemseq[:, :-1], the last position.
  GRec: the backbone over itemseq with its last item replaced by id 0, the
  last position.

  Args:
    itemseq: int32 [B, L].
    config: modeling.ModelConfig.
    softmax: "sampled" or "full" (which output layer to create).

  Returns:
    (logits float32 [B, item_size], labels int32 [B]).
  """
  labels = itemseq[:, -1]
  if config.causal:
    context = itemseq[:, :-1]
  else:
    context = tf.concat([itemseq[:, :-1], tf.zeros_like(itemseq[:, -1:])],
                        axis=1)
  hidden, _ = modeling.backbone(context, config)
  output_layer = networks.pretrain_output_layer(config, softmax)
  logits = networks.item_logits(modeling.last_position(hidden), config,
                                output_layer)
  return logits, labels


def ranking_outputs(logits, labels, top_k):
  """Rank of the label among all items and the per-example metrics.

  Rows whose held-out item is id 0 (`<UNK>`, i.e. right padding) get
  weight 0: they are not items to recommend.

  Args:
    logits: float32 [B, item_size]; labels: int32 [B].

  Returns:
    dict: "rank" int32 [B], "weights" float32 [B], "xent" float32 [B],
    "per_example" {"mrr@k", "hr@k", "ndcg@k"} float32 [B], "loss" the
    weighted mean cross-entropy (scalar).
  """
  rank = metrics_lib.rank_of_positive(logits, labels)
  weights = tf.cast(tf.not_equal(labels, 0), tf.float32)
  xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                        logits=logits)
  return {
      "rank": rank,
      "weights": weights,
      "xent": xent,
      "per_example": metrics_lib.per_example_ranking_metrics(rank, top_k),
      "loss": (tf.reduce_sum(xent * weights) /
               tf.maximum(tf.reduce_sum(weights), 1.0)),
  }


def count_metric(weights, name="num_examples"):
  """Streaming sum of `weights` [B]: (value, update_op), a local variable."""
  with tf.compat.v1.variable_scope(name):
    total = tf.compat.v1.get_variable(
        "total", [], tf.float32, tf.compat.v1.zeros_initializer(),
        trainable=False, collections=[
            tf.compat.v1.GraphKeys.LOCAL_VARIABLES,
            tf.compat.v1.GraphKeys.METRIC_VARIABLES
        ])
    update = tf.compat.v1.assign_add(total, tf.reduce_sum(weights))
    return tf.identity(total), update


def evaluation_metric_ops(ranking):
  """Estimator eval_metric_ops of `ranking_outputs`: "mrr@k", "hr@k",
  "ndcg@k", "xent_last" (weighted means) and "num_examples"."""
  per_example = dict(ranking["per_example"])
  per_example["xent_last"] = ranking["xent"]
  metric_ops = metrics_lib.mean_metric_ops(per_example, ranking["weights"])
  metric_ops["num_examples"] = count_metric(ranking["weights"])
  return metric_ops
