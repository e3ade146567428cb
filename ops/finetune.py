"""Fine-tuning graph pieces shared by training, evaluation and serving.

The network itself is `networks.peterrec_user_vectors` plus
`heads.target_embedding_table`; here are the scores, the losses, the
evaluation metrics and the top targets computed from them.
"""
import numpy as np
import tensorflow as tf

from ops import heads
from ops import metrics as metrics_lib
from ops import networks

LOSSES = ("bce", "bpr", "softmax")
EVAL_PROTOCOLS = ("sampled", "full")


def finetune_network(context, config, patch, cardinality, target_vocab_size,
                     cls_at_start=False, user_vector="cls"):
  """Backbone (+ patches), user vector and target table.

  Args:
    context: int32 [B, L] = rows[:, :-1] of the fine-tuning row layout.
    config: modeling.ModelConfig.
    patch: None, "serial" or "parallel".
    cardinality: branches of each patch.
    target_vocab_size: rows of the target table (with id 0).
    cls_at_start: causal only, the `[CLS]`-at-start ablation.
    user_vector: "cls" or "mean" (modeling.user_representation).

  Returns:
    (user vectors float32 [B, width], target table [target_vocab_size,
    width]).
  """
  user, _ = networks.peterrec_user_vectors(context, config, patch=patch,
                                           cardinality=cardinality,
                                           cls_at_start=cls_at_start,
                                           pooling=user_vector)
  table = heads.target_embedding_table(target_vocab_size, config.hidden_size)
  return user, table


def mask_unknown_target(scores):
  """float [B, T] scores with column 0 (`<UNK>`, never a target) at -inf."""
  unk = tf.fill(tf.stack([tf.shape(scores)[0], 1]), -np.inf)
  return tf.concat([unk, scores[:, 1:]], axis=1)


def target_scores(user, table):
  """float [B, T]: every target's score, `<UNK>` at -inf."""
  return mask_unknown_target(heads.all_target_scores(user, table))


def training_loss(loss_type, user, table, target, negatives):
  """Mean loss of a batch, before the regularization term.

  Args:
    loss_type: "bce" (one negative, the original), "bpr" (the LambdaFM
      script) or "softmax" (cross-entropy over all targets).
    user: float [B, width]; table: float [T, width].
    target: int32 [B]; negatives: int32 [B, N] (N >= 1 unless softmax).
  """
  if loss_type not in LOSSES:
    raise ValueError("loss must be one of %s, got %r" % (LOSSES, loss_type))
  if loss_type == "softmax":
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=target, logits=target_scores(user, table)))
  pos_logits = heads.target_logits(user, table, target)
  neg_logits = heads.target_logits(user, table, negatives[:, 0])
  if loss_type == "bpr":
    return heads.bpr_loss(pos_logits, neg_logits)
  return heads.bce_loss(pos_logits, neg_logits)


def evaluation_metric_ops(classification, eval_protocol, user, table, target,
                          negatives, top_k):
  """The Estimator's eval_metric_ops of a fine-tuning task.

  Classification: top-1 accuracy over all classes. Recommendation:
  MRR/HR/NDCG@top_k of the positive among `negatives` + the positive
  ("sampled", ties against the positive) or among all targets ("full").
  Also "num_examples", the number of evaluated rows.
  """
  if eval_protocol not in EVAL_PROTOCOLS:
    raise ValueError("eval_protocol must be one of %s, got %r" %
                     (EVAL_PROTOCOLS, eval_protocol))
  if classification:
    per_example = {"accuracy": metrics_lib.accuracy(
        target_scores(user, table), target)}
  elif eval_protocol == "sampled":
    candidates = tf.concat([negatives, tf.expand_dims(target, 1)], axis=1)
    scores = heads.candidate_scores(user, table, candidates)
    rank = metrics_lib.rank_of_positive(scores, tf.shape(negatives)[1])
    per_example = metrics_lib.per_example_ranking_metrics(rank, top_k)
  else:
    rank = metrics_lib.rank_of_positive(target_scores(user, table), target)
    per_example = metrics_lib.per_example_ranking_metrics(rank, top_k)
  metric_ops = metrics_lib.mean_metric_ops(per_example)
  ones = tf.ones_like(target, dtype=tf.bool)
  metric_ops["num_examples"] = tf.compat.v1.metrics.true_positives(
      labels=ones, predictions=ones)
  return metric_ops
