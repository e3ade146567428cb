r"""Pretrains NextItNet (causal) or the GRec encoder (masked) with tf.estimator.

The first half of the PeterRec workflow: learn the backbone on source-domain
sequences and write a checkpoint whose variable names are the original
code's, so that the fine-tuning script (and the original TF 1 code) can
restore it.

Input: a pretraining dataset converted by `tfrecord_tools.convert_csv`
(`--data_dir` holding train.tfrecord, test.tfrecord, item_vocab.txt,
metadata.json). Output, in `--output_dir`: checkpoints, TensorBoard events,
`model_config.json` (the backbone, for fine-tuning), `pretrain_config.json`
(every resolved setting), `item_vocab.txt` (a copy), `metrics.json` (the
final evaluation) and, with `--do_predict`, `predictions.tsv`.

  python nextitnet_pretrain.py --data_dir=data/ml1m --output_dir=runs/ml1m \
      --encoder=nextitnet --softmax=sampled --train_batch_size=32 \
      --num_train_steps=5000

Evaluation (docs/MODEL.md §3): every test sequence, the whole test set; the
last item is held out, the model scores ALL items from the last position
(NextItNet: context = every item but the last; GRec: the last item replaced
by id 0), and MRR@k, HR@k, NDCG@k of the held-out item are reported.

Running the same command again after an interruption resumes from the last
checkpoint in `--output_dir` (the Estimator restores it; `--num_train_steps` is
the total, not the remaining, number of steps).
"""
import collections
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

import data_loader
import script_flags
import training_utils
from ops import checkpoint as checkpoint_lib
from ops import heads
from ops import masking
from ops import modeling
from ops import networks
from ops import pretrain as pretrain_ops

ENCODERS = ("nextitnet", "grec")
PRETRAIN_CONFIG_FILENAME = "pretrain_config.json"
METRICS_FILENAME = "metrics.json"
TRAIN_LOSS_NAME = pretrain_ops.LOSS_NAME
PREDICTIONS_FILENAME = "predictions.tsv"
# A user's mistakes: a one-line `error: ...` exit (programming errors raise).
USER_ERRORS = (training_utils.RunError, data_loader.DatasetError)

# Hyperparameters of the original scripts (`model_para` of
# NextitNet_TF_Pretrain.py / GRec_TF_Pretrain.py) and of the paper. A flag
# given explicitly wins over its preset value.
PRESETS = {
    # For a user's own data: the paper's architecture at the demo's width,
    # a real batch, and the sampled softmax that scales to large catalogues.
    "default": {
        "channels": 64,
        "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
        "kernel_size": 3,
        "learning_rate": 0.001,
        "train_batch_size": 32,
        "num_train_epochs": 2,
        "softmax": {"nextitnet": "sampled", "grec": "sampled"},
    },
    "demo": {
        "channels": 64,                       # dilated_channels
        "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
        "kernel_size": 3,
        "learning_rate": 0.001,
        "train_batch_size": 2,                # the demo's toy batch
        "num_train_epochs": 2,                # 'iterations'
        # is_negsample: False (full softmax) in the NextItNet demo, which is
        # the head of the authors' checkpoint; True in the GRec demo.
        "softmax": {"nextitnet": "full", "grec": "sampled"},
    },
    "paper": {
        "channels": 256,
        "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
        "kernel_size": 3,
        "learning_rate": 0.001,
        "train_batch_size": 32,
        "num_train_epochs": 2,                # "converges in 1-2 epochs"
        "softmax": {"nextitnet": "sampled", "grec": "sampled"},
    },
}
PRESET_KEYS = ("channels", "dilations", "kernel_size", "learning_rate",
               "train_batch_size", "num_train_epochs", "softmax")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def resolve_hparams(preset, encoder, overrides=None):
  """The preset's hyperparameters with explicit values on top.

  Args:
    preset: a key of PRESETS.
    encoder: "nextitnet" or "grec" (the softmax default depends on it).
    overrides: dict {key of PRESET_KEYS: value or None}; None keeps the
      preset's value.

  Returns:
    dict with every key of PRESET_KEYS.
  """
  if preset not in PRESETS:
    raise ValueError("preset must be one of %s, got %r" %
                     (sorted(PRESETS), preset))
  if encoder not in ENCODERS:
    raise ValueError("encoder must be one of %s, got %r" % (ENCODERS, encoder))
  values = dict(PRESETS[preset])
  values["softmax"] = values["softmax"][encoder]
  values["dilations"] = list(values["dilations"])
  for key, value in (overrides or {}).items():
    if key not in PRESET_KEYS:
      raise ValueError("unknown hyperparameter %r (known: %s)" %
                       (key, PRESET_KEYS))
    if value is not None:
      values[key] = value
  values["dilations"] = [int(d) for d in values["dilations"]]
  if values["softmax"] not in networks.SOFTMAX_TYPES:
    raise ValueError("softmax must be one of %s, got %r" %
                     (networks.SOFTMAX_TYPES, values["softmax"]))
  return values


def check_init_checkpoint(init_checkpoint, config, softmax, data_dir=None):
  """Fails early when a checkpoint cannot warm-start `config`.

  Compares the checkpoint's `allitem_embeddings` with the data's item
  vocabulary and the configured channels, then every backbone variable.

  Args:
    init_checkpoint: checkpoint prefix or directory.
    config: modeling.ModelConfig.
    softmax: "sampled" or "full"; a head absent from the checkpoint is only
      logged (it starts from its initializer).
    data_dir: for the error message.

  Returns:
    The resolved checkpoint prefix.

  Raises:
    training_utils.RunError naming both sizes.
  """
  try:
    path = checkpoint_lib.resolve_checkpoint(init_checkpoint)
  except ValueError as e:
    raise training_utils.RunError("--init_checkpoint: %s" % e)
  stored = checkpoint_lib.model_variable_shapes(path)
  table = stored.get("allitem_embeddings")
  if table is None:
    raise training_utils.RunError(
        "--init_checkpoint %s has no allitem_embeddings: not a NextItNet/GRec "
        "checkpoint" % path)
  if table[0] != config.item_size:
    raise training_utils.RunError(
        "--init_checkpoint %s has an item vocabulary of %d ids "
        "(allitem_embeddings %s) but the data%s has item_vocab_size %d: the "
        "checkpoint was trained on another item vocabulary" %
        (path, table[0], table, "" if data_dir is None else " in " + data_dir,
         config.item_size))
  if table[1] != config.channels:
    raise training_utils.RunError(
        "--init_checkpoint %s has %d channels (allitem_embeddings %s) but "
        "the configuration has %d channels (--channels / --preset)" %
        (path, table[1], table, config.channels))
  try:
    checkpoint_lib.check_shapes_match(
        path, modeling.backbone_variable_shapes(config))
  except ValueError as e:
    raise training_utils.RunError(str(e))
  head = "softmax_w" if softmax == "sampled" else "logits/weight"
  if head not in stored:
    logging.warning(
        "--init_checkpoint %s has no %s: the %s-softmax output layer starts "
        "from its initializer (the checkpoint holds %s)", path, head, softmax,
        [n for n in stored if n.startswith(("softmax", "logits"))] or "none")
  return path


def write_output_dir_files(output_dir, config, pretrain_config,
                           item_vocab_path):
  """Writes model_config.json, pretrain_config.json, item_vocab.txt.

  model_config.json describes the backbone as its checkpoints hold it, for
  fine-tuning: whole tables (`modeling.unpartitioned`; pretrain_config.json
  records --num_embedding_partitions). Refuses a output_dir that holds a
  model of another configuration (its checkpoints would not restore into
  this graph).
  """
  config = modeling.unpartitioned(config)
  tf.io.gfile.makedirs(output_dir)
  config_path = os.path.join(output_dir, modeling.CONFIG_FILENAME)
  if tf.io.gfile.exists(config_path):
    existing = modeling.ModelConfig.from_json_file(config_path).to_dict()
    wanted = config.to_dict()
    # How the graph computes (EXECUTION_FIELDS) and how its variables are
    # split (PLACEMENT_FIELDS) do not change what a checkpoint restores.
    ignored = (modeling.ModelConfig.EXECUTION_FIELDS +
               modeling.ModelConfig.PLACEMENT_FIELDS)
    differences = ["%s: %r -> %r" % (k, existing.get(k), wanted[k])
                   for k in sorted(wanted)
                   if k not in ignored and existing.get(k) != wanted[k]]
    old_path = os.path.join(output_dir, PRETRAIN_CONFIG_FILENAME)
    if tf.io.gfile.exists(old_path):
      with tf.io.gfile.GFile(old_path) as reader:
        old = json.loads(reader.read())
      differences += ["%s: %r -> %r" % (k, old.get(k), pretrain_config[k])
                      for k in ("encoder", "softmax")
                      if old.get(k) != pretrain_config[k]]
    if differences:
      raise training_utils.RunError(
          "--output_dir %s holds a model of another configuration (%s); its "
          "checkpoints cannot be resumed with these settings. Use another "
          "--output_dir." % (output_dir, "; ".join(differences)))
  training_utils.write_text_atomic(config_path, config.to_json_string())
  training_utils.write_json_atomic(
      os.path.join(output_dir, PRETRAIN_CONFIG_FILENAME), pretrain_config)
  if item_vocab_path:
    training_utils.write_text_atomic(
        os.path.join(output_dir, data_loader.ITEM_VOCAB_FILE),
        data_loader.read_text(item_vocab_path))


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------


def input_fn_builder(input_files, seq_length, batch_size, is_training,
                     encoder, item_size, masked_lm_prob=0.3,
                     max_predictions_per_seq=30, seed=None,
                     shuffle_buffer=data_loader.DEFAULT_SHUFFLE_BUFFER,
                     shard=None):
  """`data_loader.pretrain_input_fn_builder` plus GRec masking for training.

  Args:
    input_files: TFRecord file(s) with the `itemseq` feature.
    seq_length: metadata seq_length.
    batch_size: int; training batches are static (drop_remainder), eval
      keeps the last partial batch.
    is_training: bool.
    encoder: "nextitnet" or "grec".
    item_size: item vocabulary size (random replacements of the masking).
    masked_lm_prob, max_predictions_per_seq: GRec masking (docs/MODEL.md §3).
    seed: optional int: shuffle and masking seeds.
    shuffle_buffer: records in the shuffle buffer.
    shard: None, or (index, count): this trainer's part of the files.

  Returns:
    input_fn(params) -> tf.data.Dataset of dicts:
      "itemseq": int32 [B, seq_length];
      GRec training only: "masked_itemseq" int32 [B, seq_length],
      "masked_positions" and "masked_labels" int32 [B, num_to_predict].
  """
  base_input_fn = data_loader.pretrain_input_fn_builder(
      input_files, seq_length, batch_size, is_training, seed=seed,
      shuffle_buffer=shuffle_buffer, shard=shard)
  if encoder not in ENCODERS:
    raise ValueError("encoder must be one of %s, got %r" % (ENCODERS, encoder))

  @tf.autograph.experimental.do_not_convert  # plain graph code
  def add_masks(features, stateless_seed):
    masked, positions, labels = masking.mask_items(
        features["itemseq"], item_size, masked_lm_prob,
        max_predictions_per_seq, stateless_seed=stateless_seed)
    features = dict(features)
    features.update(masked_itemseq=masked, masked_positions=positions,
                    masked_labels=labels)
    return features

  def input_fn(params):
    dataset = base_input_fn(params)
    if encoder == "grec" and is_training:
      # One [2] stateless seed per batch from a seeded stream: the masks do
      # not depend on the map's parallelism.
      seeds = tf.data.Dataset.random(seed=seed).batch(2)
      dataset = tf.data.Dataset.zip((dataset, seeds))
      dataset = dataset.map(add_masks, num_parallel_calls=tf.data.AUTOTUNE)
      dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset

  return input_fn


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def model_fn_builder(config, softmax, learning_rate, num_sampled=None,
                     init_checkpoint=None, top_k=5, beta1=0.9):
  """Returns the `model_fn(features, labels, mode, params)` of the Estimator.

  Variables and Adam slots carry the original names, so checkpoints are
  interchangeable with the original code's (docs/MODEL.md).

  Args:
    config: modeling.ModelConfig; config.causal selects NextItNet (features
      "itemseq") or GRec ("masked_itemseq", "masked_positions",
      "masked_labels" in training).
    softmax: "sampled" or "full". learning_rate, beta1: Adam.
    num_sampled: negatives of the sampled softmax (default int(0.2 *
      item_size)).
    init_checkpoint: optional checkpoint to warm-start the model variables.
    top_k: cut-off of the ranking metrics.

  Returns:
    model_fn. TRAIN: sampled- or full-softmax loss, Adam. EVAL: eval_metric_ops
    "mrr@k", "hr@k", "ndcg@k", "xent_last" (cross-entropy of the held-out
    item) and "num_examples"; loss = mean cross-entropy of the batch.
    PREDICT: "top_k_ids", "top_k_scores" [B, k], "label", "rank" [B].
  """
  if num_sampled is None:
    num_sampled = heads.default_num_sampled(config.item_size)

  def model_fn(features, labels, mode, params):
    del labels, params  # Unused: everything comes from `features`/closure.
    # Ids outside the embedding table are a data error, not a zero vector.
    features = {
        name: (value if name == "masked_positions" else
               data_loader.check_id_range(value, config.item_size,
                                          "item id in features[%s]" % name))
        for name, value in features.items()}
    if mode == tf.estimator.ModeKeys.TRAIN:
      loss = pretrain_ops.training_loss(features, config, softmax, num_sampled)
      _warm_start(init_checkpoint, log=True)
      optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate, beta1=beta1)
      train_op = training_utils.minimize_and_count_step(optimizer, loss)
      return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    logits, label_ids = pretrain_ops.evaluation_logits(features["itemseq"],
                                                       config, softmax)
    ranking = pretrain_ops.ranking_outputs(logits, label_ids, top_k)
    _warm_start(init_checkpoint, log=False)
    if mode == tf.estimator.ModeKeys.EVAL:
      return tf.estimator.EstimatorSpec(
          mode, loss=ranking["loss"],
          eval_metric_ops=pretrain_ops.evaluation_metric_ops(ranking))

    top_scores, top_ids = tf.nn.top_k(logits, k=top_k)
    predictions = {
        "top_k_ids": top_ids,
        "top_k_scores": top_scores,
        "label": label_ids,
        "rank": ranking["rank"],
    }
    return tf.estimator.EstimatorSpec(mode, predictions=predictions)

  return model_fn


def _warm_start(init_checkpoint, log=True):
  """init_from_checkpoint for every model variable found in the checkpoint.

  When --output_dir already has a checkpoint, the Estimator restores it over
  these initial values (resuming wins over warm-starting). `log`: say so
  (once per run: the training graph's call).
  """
  variables = tf.compat.v1.global_variables()
  restored = set()
  if init_checkpoint:
    assignment_map, restored = checkpoint_lib.assignment_map_from_checkpoint(
        variables, init_checkpoint)
    tf.compat.v1.train.init_from_checkpoint(init_checkpoint, assignment_map)
  if log:
    logging.info("%d variables, %d warm-started from %s (--verbosity=1 "
                 "lists them)", len(variables), len(restored),
                 init_checkpoint or "nothing")
    checkpoint_lib.log_variables(variables, restored, logging.debug)


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def final_metrics(eval_result, top_k):
  """Plain-Python metrics from an Estimator eval result."""
  names = ["mrr@%d" % top_k, "hr@%d" % top_k, "ndcg@%d" % top_k, "xent_last",
           "loss"]
  out = collections.OrderedDict(
      (name, float(eval_result[name])) for name in names if name in eval_result)
  out["num_examples"] = int(round(float(eval_result["num_examples"])))
  out["global_step"] = int(eval_result["global_step"])
  return out


def write_predictions(path, predictions, vocab_tokens):
  """Writes predict-mode output as TSV: row, label, rank, top-k ids/tokens.

  Streams `predictions` to a temporary file renamed at the end. Returns the
  number of rows.
  """
  count = 0
  with data_loader.atomic_text_writer(path) as writer:
    writer.write("row\tlabel_id\tlabel_token\trank\ttop_k_ids\t"
                 "top_k_tokens\n")
    for row, prediction in enumerate(predictions):
      label = int(prediction["label"])
      ids = [int(i) for i in prediction["top_k_ids"]]
      writer.write("%d\t%d\t%s\t%d\t%s\t%s\n" % (
          row, label, vocab_tokens[label], int(prediction["rank"]),
          " ".join(str(i) for i in ids),
          " ".join(vocab_tokens[i] for i in ids)))
      count += 1
  return count


Plan = collections.namedtuple("Plan", [
    "options", "metadata", "hparams", "config", "num_sampled",
    "num_train_steps", "init_checkpoint", "cluster_task"])
Plan.__doc__ = """What a pretraining run does, decided before any graph."""


def _checked_options(options):
  """The options as a namedtuple, checked before any data is read."""
  f = script_flags.options_tuple(options, define_flags)
  training_utils.check_positive({name: getattr(f, name) for name in (
      "num_train_steps", "num_train_epochs", "train_batch_size",
      "eval_batch_size")})
  training_utils.set_process_threads(f.intra_op_threads, f.inter_op_threads)
  training_utils.check_writable_dir(f.output_dir, "--output_dir")
  return script_flags.with_seeds(f)


def _plan(f):
  """Reads the data's metadata, resolves and checks the configuration."""
  metadata = data_loader.load_metadata(f.data_dir, data_loader.PRETRAIN)
  hp = resolve_hparams(f.preset, f.encoder,
                       {k: getattr(f, k) for k in PRESET_KEYS})
  causal = f.encoder == "nextitnet"
  if causal and f.has_positional_embedding:
    raise training_utils.RunError("--has_positional_embedding is a GRec "
                                  "option (--encoder=grec)")
  config = modeling.ModelConfig(
      item_size=metadata["item_vocab_size"], channels=hp["channels"],
      dilations=hp["dilations"], kernel_size=hp["kernel_size"],
      causal=causal, has_positional_embedding=f.has_positional_embedding,
      max_position=f.max_position,
      conv_implementation=f.conv_implementation)
  if (config.has_positional_embedding and
      config.max_position < metadata["seq_length"]):
    raise training_utils.RunError(
        "--max_position %d is shorter than the sequences (%d)" %
        (config.max_position, metadata["seq_length"]))
  num_sampled = f.num_sampled
  if num_sampled is None:
    num_sampled = heads.default_num_sampled(config.item_size)
  if hp["softmax"] == "sampled" and not 0 < num_sampled < config.item_size:
    raise training_utils.RunError(
        "num_sampled must be in [1, item_size=%d), got %d" %
        (config.item_size, num_sampled))
  if not 0 <= f.num_embedding_partitions <= config.item_size:
    raise training_utils.RunError(
        "--num_embedding_partitions must be in [0, item_size=%d], got %d" %
        (config.item_size, f.num_embedding_partitions))
  num_train_steps = f.num_train_steps or training_utils.num_train_steps(
      hp["num_train_epochs"], metadata["num_train"], hp["train_batch_size"])
  init_checkpoint = f.init_checkpoint or None
  if init_checkpoint:
    init_checkpoint = check_init_checkpoint(init_checkpoint, config,
                                            hp["softmax"], f.data_dir)
  return Plan(f, metadata, hp, config, num_sampled, num_train_steps,
              init_checkpoint, training_utils.tf_config_task())


def _pretrain_config(plan, command):
  """What pretrain_config.json records about the run."""
  f, hp, metadata = plan.options, plan.hparams, plan.metadata
  grec = not plan.config.causal
  return {
      "encoder": f.encoder,
      "preset": f.preset,
      "softmax": hp["softmax"],
      "num_sampled": (plan.num_sampled if hp["softmax"] == "sampled"
                      else None),
      "learning_rate": hp["learning_rate"],
      "beta1": f.beta1,
      "train_batch_size": hp["train_batch_size"],
      "eval_batch_size": f.eval_batch_size,
      "num_train_epochs": hp["num_train_epochs"],
      "num_train_steps": plan.num_train_steps,
      "top_k": f.top_k,
      "masked_lm_prob": f.masked_lm_prob if grec else None,
      "max_predictions_per_seq": f.max_predictions_per_seq if grec else None,
      "num_to_predict": (masking.num_to_predict(
          metadata["seq_length"], f.masked_lm_prob,
          f.max_predictions_per_seq) if grec else None),
      "seed": f.seed,
      "tf_random_seed": f.tf_random_seed,
      "deterministic": f.deterministic,
      "init_checkpoint": plan.init_checkpoint,
      "num_embedding_partitions": f.num_embedding_partitions,
      "data_dir": metadata["data_dir"],
      "data": {k: metadata.get(k) for k in (
          "item_vocab_size", "item_vocab_sha1", "seq_length", "num_train",
          "num_test", "pad_token_id", "input_csv", "test_fraction",
          "split_seed")},
      "command": command or " ".join(sys.argv),
  }


def _input_fns(plan):
  """(training input_fn, evaluation input_fn); a trainer of a cluster reads
  its own shard of the training files."""
  f, metadata = plan.options, plan.metadata
  train_seed = f.seed
  shard = training_utils.training_shard(plan.cluster_task)
  if shard is not None:
    # Each trainer reads its own part of the data, in its own order.
    if train_seed is not None:
      train_seed += shard[0]
    files, record_shard = data_loader.shard_files(
        data_loader.resolve_input_files(metadata["paths"]["train"]), shard)
    described = ", ".join(files)
    if record_shard:
      described = "every %d-th record of %s" % (shard[1], described)
    logging.info("%s task %d reads training shard %d of %d: %s",
                 plan.cluster_task[0], plan.cluster_task[1], shard[0],
                 shard[1], described)
  masking_options = {"masked_lm_prob": f.masked_lm_prob,
                     "max_predictions_per_seq": f.max_predictions_per_seq}
  train_input_fn = input_fn_builder(
      metadata["paths"]["train"], metadata["seq_length"],
      plan.hparams["train_batch_size"], True, f.encoder,
      plan.config.item_size, seed=train_seed,
      shuffle_buffer=f.shuffle_buffer, shard=shard, **masking_options)
  eval_input_fn = input_fn_builder(
      metadata["paths"]["test"], metadata["seq_length"], f.eval_batch_size,
      False, f.encoder, plan.config.item_size, **masking_options)
  return train_input_fn, eval_input_fn


def _check_cluster_options(plan, do_train, do_eval):
  # TF_CONFIG: train_and_evaluate runs this task's role (chief, worker, ps,
  # evaluator); only the evaluator evaluates and writes metrics.json.
  training_utils.check_cluster_run(plan.cluster_task, do_train, do_eval)
  if plan.cluster_task is not None and plan.options.do_predict:
    raise training_utils.RunError(
        "--do_predict is not supported under TF_CONFIG")


def _data_files(plan):
  return [plan.metadata["paths"]["train"], plan.metadata["paths"]["test"]]


def train(plan, estimator, train_input_fn, eval_input_fn, do_eval):
  """Trains (and, with do_eval, evaluates as train_and_evaluate does).

  Returns:
    the last evaluation result of train_and_evaluate, or None.
  """
  f = plan.options
  hooks = [training_utils.ProgressHook(
      TRAIN_LOSS_NAME + ":0", plan.hparams["train_batch_size"],
      f.log_step_count_steps, plan.num_train_steps, estimator.model_dir)]
  with training_utils.data_loss_guard(_data_files(plan)):
    if not do_eval:
      estimator.train(train_input_fn, max_steps=plan.num_train_steps,
                      hooks=hooks)
      return None
    return training_utils.train_and_evaluate(
        estimator, train_input_fn, plan.num_train_steps, hooks,
        eval_input_fn, f.eval_throttle_secs, plan.cluster_task,
        f.chief_waits_for_workers_secs)


def evaluate(plan, estimator, eval_input_fn, eval_result, timings):
  """Evaluates the latest checkpoint unless `eval_result` is of it; writes
  metrics.json and prints the table. Returns the metrics."""
  f = plan.options
  latest = tf.train.latest_checkpoint(estimator.model_dir)
  latest_step = (None if latest is None else int(
      checkpoint_lib.reader(latest).get_tensor("global_step")))
  if eval_result is None or int(eval_result["global_step"]) != latest_step:
    start = time.time()
    with training_utils.data_loss_guard(_data_files(plan)):
      eval_result = estimator.evaluate(
          eval_input_fn, steps=None,
          hooks=[training_utils.EvaluationProgressHook(
              "evaluating the test split", plan.metadata["num_test"],
              f.eval_batch_size)])
    timings["eval_seconds"] = round(time.time() - start, 1)
  metrics = final_metrics(eval_result, f.top_k)
  expected = plan.metadata["num_test"]
  if metrics["num_examples"] != expected:
    logging.info("%d of %d test sequences were ranked (the others end in "
                 "id 0, padding)", metrics["num_examples"], expected)
  report = dict(metrics)
  report.update({
      "encoder": f.encoder,
      "softmax": plan.hparams["softmax"],
      "top_k": f.top_k,
      "num_test_sequences": expected,
      "test_file": plan.metadata["paths"]["test"],
      "protocol": "held-out last item ranked among all %d items" %
                  plan.config.item_size,
      "timings": timings,
  })
  training_utils.write_json_atomic(
      os.path.join(estimator.model_dir, METRICS_FILENAME), report)
  print(training_utils.format_metrics_table(
      dict(metrics),
      title="%s pretraining, %s, step %d: full ranking of the last item" % (
          f.encoder, os.path.basename(os.path.normpath(f.data_dir)),
          metrics["global_step"])))
  sys.stdout.flush()
  return metrics


def predict(plan, estimator, eval_input_fn):
  vocab = data_loader.Vocabulary.load(plan.metadata["paths"]["item_vocab"])
  path = os.path.join(estimator.model_dir, PREDICTIONS_FILENAME)
  count = write_predictions(
      path, estimator.predict(eval_input_fn, yield_single_examples=True),
      vocab.tokens)
  logging.info("wrote %d predictions to %s", count, path)


def graph_config(plan):
  """The ModelConfig the graphs are built with: plan.config (what
  model_config.json says) split into --num_embedding_partitions parts."""
  return modeling.partitioned(plan.config,
                              plan.options.num_embedding_partitions)


def _make_estimator(plan):
  f = plan.options
  model_fn = model_fn_builder(
      graph_config(plan), plan.hparams["softmax"],
      plan.hparams["learning_rate"],
      num_sampled=plan.num_sampled, init_checkpoint=plan.init_checkpoint,
      top_k=f.top_k, beta1=f.beta1)
  return training_utils.make_estimator(
      model_fn, f.output_dir, tf_random_seed=f.tf_random_seed,
      save_checkpoints_steps=f.save_checkpoints_steps,
      keep_checkpoint_max=f.keep_checkpoint_max,
      save_summary_steps=f.save_summary_steps,
      intra_op_threads=f.intra_op_threads,
      inter_op_threads=f.inter_op_threads, save_graph_def=f.save_graph_def)


def run(options, command=None):
  """Runs pretraining/evaluation/prediction.

  Args:
    options: {flag name: value}, e.g. `default_options(data_dir=...,
      output_dir=...)`; names left out take the flag's default.
    command: the command line recorded in pretrain_config.json (default:
      this process's).

  Returns:
    dict: the final metrics (empty when not evaluated).
  """
  f = _checked_options(options)
  plan = _plan(f)
  pretrain_config = _pretrain_config(plan, command)
  write_output_dir_files(f.output_dir, plan.config, pretrain_config,
                         plan.metadata["paths"]["item_vocab"])
  resumed_from = tf.train.latest_checkpoint(f.output_dir)
  if resumed_from:
    logging.info("%s exists: continuing from it%s", resumed_from,
                 " (--init_checkpoint is only used by a fresh --output_dir)"
                 if plan.init_checkpoint else "")
  logging.info("Model configuration: %s",
               json.dumps(graph_config(plan).to_dict(), sort_keys=True))
  logging.info("Pretraining configuration: %s",
               json.dumps(pretrain_config, sort_keys=True))
  estimator = _make_estimator(plan)
  train_input_fn, eval_input_fn = _input_fns(plan)
  do_train = f.do_train
  do_eval = f.do_eval
  _check_cluster_options(plan, do_train, do_eval)
  if do_eval and plan.metadata["num_test"] == 0:
    logging.warning("the test split of %s is empty: no evaluation",
                    f.data_dir)
    do_eval = False
  eval_result, timings = None, {}
  if do_train:
    start = time.time()
    eval_result = train(plan, estimator, train_input_fn, eval_input_fn,
                        do_eval)
    timings["train_and_eval_seconds"] = round(time.time() - start, 1)
  if plan.cluster_task is not None and plan.cluster_task[0] != "evaluator":
    logging.info("%s task %d done", *plan.cluster_task[:2])
    return {}
  metrics = {}
  if do_eval:
    metrics = evaluate(plan, estimator, eval_input_fn, eval_result, timings)
  if f.do_predict:
    predict(plan, estimator, eval_input_fn)
  return metrics



def default_options(**overrides):
  """{flag name: default} with `overrides`: the options of `run`."""
  return script_flags.default_options(define_flags, **overrides)

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _preset_values(key):
  """'default: 64; demo: 64; paper: 256': a preset key's values."""
  def shown(value):
    if isinstance(value, dict):
      return "/".join("%s %s" % (encoder, value[encoder])
                      for encoder in ENCODERS)
    if isinstance(value, list):
      return ",".join(str(v) for v in value)
    return str(value)
  return "by --preset (%s)" % "; ".join(
      "%s: %s" % (name, shown(PRESETS[name][key]))
      for name in ("default", "demo", "paper"))


FLAGS_OF_PRETRAINING = script_flags.flag_table("""
--encoder (enum; default: nextitnet)
    nextitnet: causal, predicts every next item. grec: non-causal masked item
    prediction.
--preset (enum; default: default)
    Hyperparameters the flags below default to (explicit flags win). default:
    for your own data (64 channels, batch 32, 2 epochs, sampled softmax). demo:
    the original scripts' model_para (batch 2; NextItNet full softmax, GRec
    sampled). paper: 256 channels.
--softmax (enum)
    Output layer: sampled (softmax_w/softmax_b) or full (the 1x1 conv
    `logits`).
--num_sampled (integer)
    Negatives of the sampled softmax. Default int(0.2 * item_size).
--masked_lm_prob (float; default: 0.3)
    GRec: fraction masked.
--max_predictions_per_seq (integer; default: 30)
    GRec: most masked positions per sequence.
--has_positional_embedding (bool; default: false)
    GRec: concatenate a learned positional embedding (doubles the width).
--max_position (integer; default: 100)
    GRec: rows of the positional embedding table.
--shuffle_buffer (integer)
    Training shuffle buffer (records).
--num_embedding_partitions (integer; default: 0)
    Split the item table allitem_embeddings and the output layer (softmax_w
    and softmax_b, or the full softmax's logits) into this many variables
    each, which a parameter-server cluster places on its ps tasks in turn: set
    it to the number of ps tasks when the tables are too large for one. Their
    gradients are then sparse (only the rows a step looks up travel). 0 or 1:
    one variable each, as the original. Checkpoints keep the original names
    either way (the parts are saved as slices of the whole tensors) and
    restore into any partitioning; distributed/repartition_checkpoint.py
    rewrites them as whole tensors or as slices (docs/SCALE.md).
""", enums={"encoder": ENCODERS, "preset": sorted(PRESETS),
            "softmax": networks.SOFTMAX_TYPES})


def define_flags(flag_values=flags.FLAGS):
  """Declares the flags (idempotent: safe to call twice, e.g. in tests)."""
  if "encoder" in flag_values:
    return
  script_flags.define_shared_flags(
      flag_values, defaults={"seed": 10},
      default_notes={key: _preset_values(key) for key in PRESET_KEYS
                     if key != "softmax"})
  script_flags.define_table(
      flag_values, FLAGS_OF_PRETRAINING,
      defaults={"shuffle_buffer": data_loader.DEFAULT_SHUFFLE_BUFFER},
      notes={"softmax": "Default: %s." % _preset_values("softmax")})


main = script_flags.main_function(run, define_flags, USER_ERRORS)

if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir", "output_dir"])
  app.run(main)
