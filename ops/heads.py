"""Output heads and losses: NextItNet / GRec pretraining, PeterRec targets."""
import tensorflow as tf

from ops import layers

TARGET_SCOPE = "target-item"
TARGET_TABLE_NAME = "allitem_embeddings_target"
TARGET_L2_SCALE = 0.02

# Two ways to compute the sampled-softmax loss (see `sampled_softmax_loss`).
SAMPLED_SOFTMAX_IMPLEMENTATIONS = ("tf", "split")


def softmax_variables(item_size, width, with_bias=True, partitions=1):
  """The sampled-softmax output layer `softmax_w`, `softmax_b`.

  `softmax_w` [item_size, width] ~ normal(0, 0.01); `softmax_b` [item_size]
  constant 0.1. The non-causal PeterRec graph of the original creates
  `softmax_w` only (`with_bias=False`). With `partitions` > 1 each is that
  many variables of consecutive rows (`layers.row_partitioner`), which
  every function here accepts in place of the whole one.

  Returns:
    (softmax_w, softmax_b or None).
  """
  softmax_w = tf.compat.v1.get_variable(
      "softmax_w", [item_size, width], tf.float32,
      tf.compat.v1.random_normal_initializer(0.0, 0.01),
      partitioner=layers.row_partitioner(partitions))
  softmax_b = None
  if with_bias:
    softmax_b = tf.compat.v1.get_variable(
        "softmax_b", [item_size], tf.float32,
        tf.compat.v1.constant_initializer(0.1),
        partitioner=layers.row_partitioner(partitions))
  return softmax_w, softmax_b


def default_num_sampled(item_size):
  """The original's number of sampled negatives: 20% of the items."""
  return int(0.2 * item_size)


def sampled_softmax_loss(hidden, labels, softmax_w, softmax_b, num_sampled,
                         seed=None, implementation="split",
                         embedding_gradients="sparse", towers=1):
  """Mean sampled-softmax loss with the log-uniform candidate sampler.

  The loss of `tf.compat.v1.nn.sampled_softmax_loss` (one true class,
  accidental hits removed, log expected counts subtracted), averaged.

  Args:
    hidden: float32 Tensor [N, width], one row per predicted position.
    labels: int Tensor [N], the true item of each row.
    softmax_w: [item_size, width]; softmax_b: [item_size] (either can be
      partitioned in row blocks, see `softmax_variables`).
    num_sampled: int, negatives per batch.
    seed: optional op seed of the sampler.
    implementation: one of SAMPLED_SOFTMAX_IMPLEMENTATIONS. "tf" calls
      `tf.compat.v1.nn.sampled_softmax_loss`, as the original. "split"
      (`split_sampled_softmax_losses`) draws the same candidates with the
      same sampler op and computes the same losses without concatenating
      the true and sampled rows and logits: about 30% less time for the
      head of NextItNet pretraining on 2 CPU cores (benchmarks/README.md).
    embedding_gradients: "split" only: how the gradients of `softmax_w` and
      `softmax_b` are represented, see layers.EMBEDDING_GRADIENTS.
    towers: "split" only: row blocks computed side by side (see
      modeling.num_towers); the candidates are drawn once for all rows.

  Returns:
    float32 scalar.
  """
  if implementation not in SAMPLED_SOFTMAX_IMPLEMENTATIONS:
    raise ValueError("Unknown sampled softmax implementation %r, expected "
                     "one of %s" % (implementation,
                                    SAMPLED_SOFTMAX_IMPLEMENTATIONS))
  item_size = sum(int(part.shape[0]) for part in layers.shards(softmax_w))
  labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
  if implementation == "split":
    sampled_values = tf.random.log_uniform_candidate_sampler(
        true_classes=labels, num_true=1, num_sampled=num_sampled,
        unique=True, range_max=item_size, seed=seed)
    losses = split_sampled_softmax_losses(
        hidden, labels, softmax_w, softmax_b, sampled_values,
        embedding_gradients=embedding_gradients, towers=towers)
  else:
    # "div": row blocks, the layout of partitioned variables (the same
    # lookup for a whole variable).
    losses = tf.compat.v1.nn.sampled_softmax_loss(
        softmax_w, softmax_b, labels, hidden, num_sampled, item_size,
        seed=seed, partition_strategy="div")
  return tf.reduce_mean(losses)


def split_sampled_softmax_losses(hidden, labels, softmax_w, softmax_b,
                                 sampled_values, embedding_gradients="sparse",
                                 towers=1):
  """Per-row sampled-softmax losses, true and sampled logits kept apart.

  The same function as `tf.compat.v1.nn.sampled_softmax_loss(...,
  sampled_values=sampled_values)` with one true class: logits
  `hidden . w + b - log(expected count)`, sampled candidates equal to the
  row's label pushed to -FLOAT_MAX (accidental hits), loss = logsumexp(true,
  sampled) - true. TensorFlow's version gathers labels and candidates in one
  lookup, slices it, concatenates the [N, 1 + S] logits and applies the
  dense softmax cross-entropy kernel; here the true logit stays a vector
  and the log-sum-exp is written out, which is cheaper on CPU and has the
  same gradient (the softmax over the N x (1 + S) logits minus the label).

  Args:
    hidden: float32 [N, width].
    labels: int64 [N, 1].
    softmax_w: [item_size, width]; softmax_b: [item_size].
    sampled_values: (sampled [S], true_expected_count [N, 1],
      sampled_expected_count [S]) from a candidate sampler.
    embedding_gradients: see layers.EMBEDDING_GRADIENTS.
    towers: the [N, S] logits are computed in this many row blocks side by
      side (the same values; see modeling.num_towers). N must be static
      when towers > 1.

  Returns:
    float32 [N].
  """
  with tf.name_scope("sampled_softmax_loss"):
    sampled, true_expected, sampled_expected = (
        tf.stop_gradient(value) for value in sampled_values)
    sampled = tf.cast(sampled, tf.int64)
    labels_flat = tf.reshape(labels, [-1])
    true_w, sampled_w = layers.gather(softmax_w, [labels_flat, sampled],
                                      gradient=embedding_gradients)
    true_b, sampled_b = layers.gather(softmax_b, [labels_flat, sampled],
                                      gradient=embedding_gradients)
    # Biases minus the log expected counts, added once per logit.
    true_offset = true_b - tf.math.log(tf.reshape(true_expected, [-1]))
    sampled_offset = sampled_b - tf.math.log(sampled_expected)
    true_logits = tf.reduce_sum(hidden * true_w, axis=1) + true_offset
    if towers == 1:
      return _sampled_softmax_rows(hidden, labels, true_logits, sampled,
                                   sampled_w, sampled_offset)
    return tf.concat([
        _sampled_softmax_rows(*(parts + (sampled, sampled_w, sampled_offset)))
        for parts in zip(*(layers.split_rows(t, towers)
                           for t in (hidden, labels, true_logits)))
    ], axis=0)


def _sampled_softmax_rows(hidden, labels, true_logits, sampled, sampled_w,
                          sampled_offset):
  """Losses [n] of n rows given their true logits and the shared candidates."""
  sampled_logits = tf.nn.bias_add(
      tf.matmul(hidden, sampled_w, transpose_b=True), sampled_offset)
  # Accidental hits (a candidate equal to the row's label) get -FLOAT_MAX.
  hit_rows, hit_columns, hit_weights = tf.nn.compute_accidental_hits(
      labels, sampled, num_true=1)
  hit_indices = tf.stack([hit_rows, tf.cast(hit_columns, tf.int32)], axis=1)
  sampled_logits = tf.tensor_scatter_nd_add(sampled_logits, hit_indices,
                                            hit_weights)
  # logsumexp over [true, sampled...] per row, shifted by the row maximum.
  row_max = tf.stop_gradient(
      tf.maximum(true_logits, tf.reduce_max(sampled_logits, axis=1)))
  sum_exp = tf.exp(true_logits - row_max) + tf.reduce_sum(
      tf.exp(sampled_logits - tf.expand_dims(row_max, 1)), axis=1)
  return row_max + tf.math.log(sum_exp) - true_logits


def full_softmax_logits(hidden, item_size, conv_implementation="atrous",
                        partitions=1):
  """The full-softmax head: a 1x1 conv `logits` on relu(hidden).

  Args:
    hidden: float32 Tensor [batch_size, seq_length, width].
    item_size: int.
    partitions: `logits/weight` [1, 1, width, item_size] and `logits/bias`
      [item_size] split along the items into this many variables (0 or 1:
      whole, the original).

  Returns:
    float32 Tensor [batch_size, seq_length, item_size].
  """
  return layers.conv1d(tf.nn.relu(hidden), item_size, name="logits",
                       implementation=conv_implementation,
                       reuse=tf.compat.v1.AUTO_REUSE,
                       output_partitions=partitions)


def full_softmax_losses(logits, labels):
  """Softmax cross-entropy of every position: float32 [...].

  Args:
    logits: float32 [..., item_size]; labels: int [...] of the same prefix.
  """
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=logits)


def full_softmax_loss(logits, labels):
  """Mean softmax cross-entropy over every position (see full_softmax_losses)."""
  return tf.reduce_mean(full_softmax_losses(logits, labels))


def output_logits(vectors, softmax_w, softmax_b):
  """vectors @ softmax_w^T + softmax_b: float32 [N, item_size] from [N, width].

  Partitioned `softmax_w`/`softmax_b` are concatenated first.
  """
  return tf.nn.bias_add(
      tf.matmul(vectors, layers.whole(softmax_w), transpose_b=True),
      layers.whole(softmax_b))


def gather_indexes(sequence, positions):
  """Gathers hidden states at given positions (GRec masked positions).

  Args:
    sequence: float32 Tensor [batch_size, seq_length, width].
    positions: int32 Tensor [batch_size, num_positions].

  Returns:
    float32 Tensor [batch_size * num_positions, width].
  """
  batch_size, seq_length, width = layers.get_shape_list(sequence,
                                                        expected_rank=3)
  offsets = tf.reshape(tf.range(0, batch_size, dtype=tf.int32) * seq_length,
                       [-1, 1])
  flat_positions = tf.reshape(tf.cast(positions, tf.int32) + offsets, [-1])
  flat_sequence = tf.reshape(sequence, [-1, width])
  return tf.gather(flat_sequence, flat_positions)


def l2_regularizer(scale):
  """tf.contrib.layers.l2_regularizer(scale): scale * sum(w**2) / 2."""
  def regularizer(weights):
    return tf.multiply(scale, tf.nn.l2_loss(weights), name="l2_regularizer")
  return regularizer


def target_embedding_table(target_size, width, l2_scale=TARGET_L2_SCALE):
  """`target-item/allitem_embeddings_target` [target_size, width].

  Truncated normal, stddev 0.02, with the tf.contrib-style L2 regularizer,
  which adds `l2_scale * sum(w**2) / 2` to the REGULARIZATION_LOSSES
  collection.
  """
  with tf.compat.v1.variable_scope(TARGET_SCOPE):
    return tf.compat.v1.get_variable(
        TARGET_TABLE_NAME, [target_size, width],
        initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.02),
        regularizer=l2_regularizer(l2_scale))


def target_logits(user_vectors, target_table, target_ids):
  """Scores of one target per user: dot(user, target embedding).

  Args:
    user_vectors: float32 [batch_size, width].
    target_table: float32 [target_size, width].
    target_ids: int [batch_size].

  Returns:
    float32 [batch_size].
  """
  embeddings = tf.nn.embedding_lookup(target_table, target_ids)
  return tf.reduce_sum(user_vectors * embeddings, axis=-1)


def candidate_scores(user_vectors, target_table, candidate_ids):
  """Scores of a list of candidates per user.

  Args:
    user_vectors: float32 [batch_size, width].
    target_table: float32 [target_size, width].
    candidate_ids: int [batch_size, num_candidates].

  Returns:
    float32 [batch_size, num_candidates].
  """
  embeddings = tf.nn.embedding_lookup(target_table, candidate_ids)
  scores = tf.matmul(tf.expand_dims(user_vectors, 1), embeddings,
                     transpose_b=True)
  return tf.squeeze(scores, [1])


def all_target_scores(user_vectors, target_table):
  """Scores of every target: float32 [batch_size, target_size]."""
  return tf.matmul(user_vectors, target_table, transpose_b=True)


def bce_loss(pos_logits, neg_logits):
  """The original's binary cross-entropy over one positive and one negative.

  mean(-log(sigmoid(pos) + 1e-24) - log(1 - sigmoid(neg) + 1e-24)).
  """
  return tf.reduce_mean(
      -tf.math.log(tf.sigmoid(pos_logits) + 1e-24) -
      tf.math.log(1 - tf.sigmoid(neg_logits) + 1e-24))


def bpr_loss(pos_logits, neg_logits):
  """BPR: -mean(log sigmoid(pos - neg)), computed stably with log_sigmoid."""
  return -tf.reduce_mean(tf.math.log_sigmoid(pos_logits - neg_logits))


def regularization_loss():
  """Mean of the REGULARIZATION_LOSSES collection (0 when it is empty).

  The original adds `tf.reduce_mean(get_collection(REGULARIZATION_LOSSES))`.
  """
  losses = tf.compat.v1.get_collection(
      tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES)
  if not losses:
    return tf.constant(0.0)
  return tf.reduce_mean(tf.stack(losses))
