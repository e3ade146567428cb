"""Calibration rows: what a task reaches without a pretrained network.

Two yardsticks, computed on exactly the rows and candidates the fine-tuning
script uses (the same validation carve, the same test split, the same 99
seeded evaluation negatives, read through `data_loader`'s input functions):

* the user-independent reference: every user gets the same scores, the
  training split's class or target frequencies (majority class; popularity
  ranking). A causal network with `[CLS]` at the start cannot do better.
* a linear bag-of-source-items model, trained on the same training rows and
  tuned on the same validation rows:
  - classification: softmax regression on the normalised bag of the user's
    source items (`x_i = 1/n` for each of the n items), L2-regularised,
    full-batch Adam; the L2 weight and the step are chosen on validation
    accuracy;
  - recommendation: a linear scorer of targets from the bag,
    `score(user, t) = mean_{i in bag} e_i . v_t + b_t` (linear in the bag;
    a rank-`dim` factorisation of the item-by-target weight matrix, which
    would not fit in memory at full rank), trained with the fine-tuning
    script's loss (binary cross-entropy with one uniformly sampled negative
    target), mini-batch Adam; L2 and the epoch chosen on validation HR@k.

These are calibration, not methods of the paper: a pretrained method that
does not beat them has not shown transfer on that task.

Pure numpy over arrays read with TensorFlow's input pipeline; no flags.
"""
import numpy as np
import tensorflow as tf

import data_loader

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3)


def read_split(metadata, split, row_mask=None, num_negatives=0,
               eval_seed=12345, batch_size=512, distinct_negatives=False):
  """A split's examples as numpy arrays, through the project's input fn.

  With `num_negatives` and `eval_seed` as peterrec_finetune's evaluation,
  the negatives are exactly the ones the fine-tuning script ranks against.

  Returns:
    dict: sources int64 [N, source_length], targets int64 [N], negatives
    int64 [N, num_negatives].
  """
  input_fn = data_loader.finetune_input_fn_builder(
      metadata["paths"][split], metadata["source_length"], causal=True,
      batch_size=batch_size, is_training=False,
      target_vocab_size=metadata["target_vocab_size"],
      num_negatives=num_negatives, seed=eval_seed, row_mask=row_mask,
      distinct_negatives=distinct_negatives and num_negatives > 1)
  length = metadata["source_length"]
  parts = {"sources": [], "targets": [], "negatives": []}
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    batch = tf.compat.v1.data.make_one_shot_iterator(input_fn({})).get_next()
    with tf.compat.v1.Session() as session:
      while True:
        try:
          values = session.run(batch)
        except tf.errors.OutOfRangeError:
          break
        parts["sources"].append(values["rows"][:, :length])
        parts["targets"].append(values["target"])
        parts["negatives"].append(values["negatives"])
  if not parts["targets"]:
    return {"sources": np.zeros([0, length], np.int64),
            "targets": np.zeros([0], np.int64),
            "negatives": np.zeros([0, num_negatives], np.int64)}
  return {k: np.concatenate(v).astype(np.int64) for k, v in parts.items()}


def ranking_metrics(positive_scores, negative_scores, top_k=5):
  """MRR@k and HR@k with ties counted against the positive (the paper's).

  Args:
    positive_scores: float [N].
    negative_scores: float [N, K].

  Returns:
    dict {"mrr@k", "hr@k"} of floats.
  """
  return metrics_of_ranks(
      np.sum(negative_scores >= positive_scores[:, None], axis=1), top_k)


def metrics_of_ranks(rank, top_k=5):
  """MRR@k and HR@k of 0-based ranks of the positives: dict of floats."""
  hit = rank < top_k
  return {"mrr@%d" % top_k: float(np.mean(np.where(hit, 1.0 / (rank + 1),
                                                   0.0))),
          "hr@%d" % top_k: float(np.mean(hit)),
          "ndcg@%d" % top_k: float(np.mean(np.where(
              hit, 1.0 / np.log2(rank + 2.0), 0.0)))}


def user_independent_reference(train_targets, test, target_vocab_size,
                               classification, top_k=5):
  """Majority class / popularity ranking of the training targets on `test`."""
  frequencies = np.bincount(train_targets, minlength=target_vocab_size)
  frequencies = frequencies.astype(np.float64)
  frequencies[0] = -1.0  # <UNK> is never a target
  if classification:
    return {"accuracy": float(np.mean(test["targets"] ==
                                      np.argmax(frequencies)))}
  return ranking_metrics(frequencies[test["targets"]],
                         frequencies[test["negatives"]], top_k)


def test_reference(metadata, classification, eval_protocol="sampled",
                   num_eval_negatives=99, eval_seed=12345,
                   eval_batch_size=512, distinct_negatives=False, top_k=5):
  """The user-independent reference on a dataset's whole test split.

  Ranks by the training split's target frequencies (metadata), against
  exactly the evaluation negatives of peterrec_finetune with the same
  options (sampled protocol) or among all targets (full).
  """
  frequencies = np.asarray(metadata.get("train_target_frequencies",
                                        metadata["target_frequencies"]),
                           dtype=np.int64)
  train_targets = np.repeat(np.arange(len(frequencies)), frequencies)
  sampled = not classification and eval_protocol == "sampled"
  test = read_split(metadata, "test", None,
                    num_eval_negatives if sampled else 0, eval_seed,
                    eval_batch_size, distinct_negatives)
  if classification or sampled:
    return user_independent_reference(train_targets, test, len(frequencies),
                                      classification, top_k)
  # Full ranking: the other targets at least as frequent rank above.
  ordered = np.sort(frequencies[1:])
  positive = frequencies[test["targets"]]
  rank = len(ordered) - np.searchsorted(ordered, positive, side="left") - 1
  return metrics_of_ranks(rank, top_k)


def bag_weights(sources, ignored_ids):
  """Per-position weights of the normalised bag: 1/n on the n real items.

  Args:
    sources: int [N, L].
    ignored_ids: ids that are not items (<UNK> 0, the pad token's id).

  Returns:
    float32 [N, L].
  """
  real = ~np.isin(sources, list(ignored_ids))
  counts = np.maximum(real.sum(axis=1, keepdims=True), 1)
  return (real / counts).astype(np.float32)


class _Adam(object):
  """Adam on a list of numpy arrays (in place)."""

  def __init__(self, params, learning_rate):
    self.params = params
    self.learning_rate = learning_rate
    self.m = [np.zeros_like(p) for p in params]
    self.v = [np.zeros_like(p) for p in params]
    self.t = 0

  def step(self, grads, beta1=0.9, beta2=0.999, epsilon=1e-8):
    self.t += 1
    scale = (self.learning_rate * np.sqrt(1 - beta2 ** self.t) /
             (1 - beta1 ** self.t))
    for p, g, m, v in zip(self.params, grads, self.m, self.v):
      m *= beta1
      m += (1 - beta1) * g
      v *= beta2
      v += (1 - beta2) * g * g
      p -= scale * m / (np.sqrt(v) + epsilon)


def _bag_product(weights_table, sources, bag):
  """sum_l bag[n, l] * table[sources[n, l]]: float32 [N, D]."""
  return np.einsum("nl,nld->nd", bag, weights_table[sources])


def scatter_add(num_rows, ids, values):
  """Rows of `values` summed into row `ids` of a zero table (np.add.at).

  Args:
    num_rows: V, rows of the table.
    ids: int [M] in [0, V).
    values: float [M, ...].

  Returns:
    float32 [V, ...]. Sorted segment sums: np.add.at took half of the
    calibration rows' time.
  """
  order = np.argsort(ids, kind="stable")
  sorted_ids = ids[order]
  starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
  table = np.zeros((num_rows,) + values.shape[1:], np.float32)
  table[sorted_ids[starts]] = np.add.reduceat(values[order], starts, axis=0)
  return table


def _bag_gradient(shape, sources, bag, upstream):
  """Gradient of `_bag_product` w.r.t. the table, for `upstream` [N, D]."""
  return scatter_add(shape[0], sources.reshape([-1]),
                     (bag[:, :, None] * upstream[:, None, :]).reshape(
                         [-1, shape[1]]))


def fit_softmax_regression(train, validation, num_items, num_classes,
                           ignored_ids, l2_grid=DEFAULT_L2_GRID, steps=300,
                           eval_every=10, learning_rate=0.05, seed=0):
  """Bag-of-items softmax regression, L2 and step chosen on validation.

  Returns:
    (predict_fn(split) -> int [N] classes, selection dict).
  """
  train_bag = bag_weights(train["sources"], ignored_ids)
  valid_bag = bag_weights(validation["sources"], ignored_ids)
  one_hot = np.eye(num_classes, dtype=np.float32)[train["targets"]]
  best = None
  for l2 in l2_grid:
    rng = np.random.RandomState(seed)
    weights = (0.01 * rng.randn(num_items, num_classes)).astype(np.float32)
    bias = np.zeros([num_classes], np.float32)
    adam = _Adam([weights, bias], learning_rate)
    for step in range(1, steps + 1):
      logits = _bag_product(weights, train["sources"], train_bag) + bias
      logits[:, 0] = -np.inf  # <UNK> is never a class
      probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
      probabilities /= probabilities.sum(axis=1, keepdims=True)
      upstream = (probabilities - one_hot) / len(one_hot)
      adam.step([_bag_gradient(weights.shape, train["sources"], train_bag,
                               upstream) + l2 * weights,
                 upstream.sum(axis=0)])
      if step % eval_every == 0:
        scores = _bag_product(weights, validation["sources"], valid_bag)
        scores[:, 0] = -np.inf
        accuracy = float(np.mean(np.argmax(scores + bias, axis=1) ==
                                 validation["targets"]))
        if best is None or accuracy > best["validation_accuracy"]:
          best = {"l2": l2, "step": step, "validation_accuracy": accuracy,
                  "weights": weights.copy(), "bias": bias.copy()}

  def predict(split):
    scores = _bag_product(best["weights"], split["sources"],
                          bag_weights(split["sources"], ignored_ids))
    scores[:, 0] = -np.inf
    return np.argmax(scores + best["bias"], axis=1)

  return predict, {k: v for k, v in best.items()
                   if k not in ("weights", "bias")}


def fit_bag_ranker(train, validation, num_items, target_vocab_size,
                   ignored_ids, l2_grid=DEFAULT_L2_GRID, epochs=10, dim=32,
                   batch_size=512, learning_rate=0.01, top_k=5, seed=0):
  """Linear bag-of-items target scorer, L2 and epoch chosen on validation.

  `validation` must carry the evaluation negatives (`read_split`).

  Returns:
    (score_fn(split) -> (positive [N], negatives [N, K]), selection dict).
  """
  key = "hr@%d" % top_k
  best = None
  for l2 in l2_grid:
    rng = np.random.RandomState(seed)
    items = (0.02 * rng.randn(num_items, dim)).astype(np.float32)
    targets = (0.02 * rng.randn(target_vocab_size, dim)).astype(np.float32)
    bias = np.zeros([target_vocab_size], np.float32)
    adam = _Adam([items, targets, bias], learning_rate)
    for epoch in range(1, epochs + 1):
      order = rng.permutation(len(train["targets"]))
      for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        sources = train["sources"][index]
        bag = bag_weights(sources, ignored_ids)
        positive = train["targets"][index]
        negative = rng.randint(1, target_vocab_size - 1, size=len(index))
        negative += negative >= positive  # never the positive
        user = _bag_product(items, sources, bag)
        grad_user = np.zeros_like(user)
        grad_targets = np.zeros_like(targets)
        grad_bias = np.zeros_like(bias)
        for ids, label in ((positive, 1.0), (negative, 0.0)):
          logits = np.sum(user * targets[ids], axis=1) + bias[ids]
          upstream = (1.0 / (1.0 + np.exp(-logits)) - label) / len(index)
          grad_user += upstream[:, None] * targets[ids]
          grad_targets += scatter_add(len(targets), ids,
                                      upstream[:, None] * user)
          grad_bias += scatter_add(len(bias), ids, upstream)
        adam.step([_bag_gradient(items.shape, sources, bag, grad_user) +
                   l2 * items, grad_targets + l2 * targets, grad_bias])
      params = (items, targets, bias)
      value = ranking_metrics(*_candidate_scores(params, validation,
                                                 ignored_ids), top_k)[key]
      if best is None or value > best["validation_" + key]:
        best = {"l2": l2, "epoch": epoch, "validation_" + key: value,
                "params": tuple(p.copy() for p in params)}

  def score(split):
    return _candidate_scores(best["params"], split, ignored_ids)

  return score, {k: v for k, v in best.items() if k != "params"}


def _candidate_scores(params, split, ignored_ids):
  items, targets, bias = params
  user = _bag_product(items, split["sources"],
                      bag_weights(split["sources"], ignored_ids))
  positive = np.sum(user * targets[split["targets"]], axis=1)
  negatives = np.einsum("nd,nkd->nk", user, targets[split["negatives"]])
  return (positive + bias[split["targets"]],
          negatives + bias[split["negatives"]])


def calibration_rows(metadata, classification, train_mask, validation_mask,
                     num_eval_negatives=99, eval_seed=12345,
                     eval_batch_size=512, top_k=5, seed=0):
  """Both calibration rows of one task, on the fine-tuning script's splits.

  Args:
    metadata: data_loader.load_metadata of the fine-tuning dataset.
    classification: bool, the task kind.
    train_mask, validation_mask: bool arrays over the training split's rows
      (`data_loader.carve_training_rows`, as peterrec_finetune plans them).
    num_eval_negatives, eval_seed, eval_batch_size, top_k: the sampled
      protocol, as given to peterrec_finetune (the negatives are drawn per
      batch: the same batch size gives the same negatives).
    seed: initialisation and shuffling of the linear model.

  Returns:
    dict: "reference" and "linear" test metrics, "linear_selection" (the
    validation-chosen L2 and step/epoch with its validation metric).
  """
  negatives = 0 if classification else num_eval_negatives
  splits = {
      name: read_split(metadata, split, mask, negatives, eval_seed,
                       eval_batch_size)
      for name, split, mask in (("train", "train", train_mask),
                                ("validation", "train", validation_mask),
                                ("test", "test", None))}
  ignored = {0}
  if metadata.get("pad_token_id") is not None:
    ignored.add(metadata["pad_token_id"])
  reference = user_independent_reference(
      splits["train"]["targets"], splits["test"],
      metadata["target_vocab_size"], classification, top_k)
  if classification:
    predict, selection = fit_softmax_regression(
        splits["train"], splits["validation"], metadata["item_vocab_size"],
        metadata["target_vocab_size"], ignored, seed=seed)
    linear = {"accuracy": float(np.mean(predict(splits["test"]) ==
                                        splits["test"]["targets"]))}
  else:
    score, selection = fit_bag_ranker(
        splits["train"], splits["validation"], metadata["item_vocab_size"],
        metadata["target_vocab_size"], ignored, top_k=top_k, seed=seed)
    linear = ranking_metrics(*score(splits["test"]), top_k=top_k)
  return {"reference": reference, "linear": linear,
          "linear_selection": selection}
