r"""PeterRec fine-tuning: model patches on a pretrained NextItNet/GRec backbone.

The pretrained network is restored and frozen, model patches are inserted
in every residual block, and only what `--method` says is trained (the
paper's baselines share the graph: `finetuning.METHOD_TABLE`). The task is
the one the dataset was converted as (recommendation of cold-start targets,
or classification). Validation on held-out training users picks the
checkpoint that is tested, exported and served; test metrics cover the
whole test split.

  python peterrec_finetune.py --data_dir=output/data/task \
      --init_checkpoint=output/runs/pretrain --output_dir=output/runs/peterrec

Outputs in --output_dir: checkpoints (the best validated one in `best/`),
`parameters.json`, `metrics.json`, `task_patch/` (only what the task
trained) and, on request, a SavedModel and `predictions.jsonl`.

Under TF_CONFIG the same command runs one task of a parameter-server cluster
(`tf.estimator.train_and_evaluate`, as nextitnet_pretrain.py; docs/SCALE.md):
the variables live on the ps tasks, the chief restores the backbone once and
checkpoints, the chief and the workers train on disjoint parts of the
training rows, and the evaluator validates each checkpoint (keeping the best
in `best/`), then writes the outputs above as one process does. Early
stopping is single-process only.
"""
import os

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

import baselines
import data_loader
import finetuning
import script_flags
import serving
import training_utils
from ops import finetune as finetune_ops
from ops import heads
from ops import modeling

TASK_PATCH_EVAL_DIR = "task_patch_eval"
# A user's mistakes: a one-line `error: ...` exit (programming errors raise).
USER_ERRORS = (finetuning.CompatibilityError, data_loader.DatasetError,
           training_utils.RunError)


# ---------------------------------------------------------------------------
# model_fn and input_fn builders
# ---------------------------------------------------------------------------


def model_fn_builder(model_config, init_checkpoint, method, insertion,
                     cardinality, task, target_vocab_size, loss="bce",
                     learning_rate=0.001, beta1=0.9, eval_protocol="sampled",
                     top_k=5, predict_top_k=10, task_patch=None,
                     cls_at_start=False, user_vector="cls"):
  """Returns the Estimator `model_fn` of fine-tuning.

  Args:
    model_config: modeling.ModelConfig of the backbone.
    init_checkpoint: pretrained backbone prefix (or None).
    method, insertion, cardinality: finetuning.METHOD_TABLE, the patches.
    task: "recommendation" or "classification".
    target_vocab_size: target (or class) vocabulary size, with id 0.
    loss: ops.finetune.LOSSES. learning_rate, beta1: Adam.
    eval_protocol: "sampled" (features["negatives"] + the positive) or
      "full" (all targets); classification reports accuracy.
    top_k: cut-off of MRR/HR/NDCG; predict_top_k: targets per prediction.
    task_patch: None, or (patch prefix, backbone prefix or None).
    cls_at_start, user_vector: the user vector (ops.modeling).

  Features: rows int32 [B, L], target int32 [B], negatives int32 [B, N].
  """
  finetuning.check_model_arguments(method, insertion, task, init_checkpoint,
                                   task_patch)

  def model_fn(features, labels, mode, params):
    del labels, params  # Everything is in `features` and the closure.
    # Ids outside the tables are a data error, not a silent zero embedding.
    context = data_loader.check_id_range(
        features["rows"][:, :-1], model_config.item_size,
        "item id in features[rows]")
    target = data_loader.check_id_range(features["target"], target_vocab_size,
                                        "target id in features[target]")
    user, table = finetuning.build_finetune_model(
        context, model_config, method, insertion, cardinality,
        target_vocab_size, cls_at_start, user_vector)
    variables = tf.compat.v1.trainable_variables()
    trained = finetuning.trainable_variables_for(
        method, variables, len(model_config.dilations))
    finetuning.restore_and_log(
        method, init_checkpoint, task_patch, variables, trained,
        log_each=(mode == tf.estimator.ModeKeys.TRAIN or
                  task_patch is not None))
    if mode == tf.estimator.ModeKeys.PREDICT:
      return _predict_spec(user, table, target,
                           min(predict_top_k, target_vocab_size - 1))
    total_loss = tf.identity(
        finetune_ops.training_loss(loss, user, table, target,
                                   features["negatives"]) +
        heads.regularization_loss(), name="total_loss")
    if mode == tf.estimator.ModeKeys.TRAIN:
      optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate, beta1=beta1)
      # Only the method's variables: the frozen ones stay bit-identical.
      train_op = training_utils.minimize_and_count_step(
          optimizer, total_loss, var_list=trained)
      return tf.estimator.EstimatorSpec(mode, loss=total_loss,
                                        train_op=train_op)
    return tf.estimator.EstimatorSpec(
        mode, loss=total_loss,
        eval_metric_ops=finetune_ops.evaluation_metric_ops(
            task == "classification", eval_protocol, user, table, target,
            features["negatives"], top_k))

  return model_fn


def _predict_spec(user, table, target, k):
  top_scores, top_ids = tf.nn.top_k(finetune_ops.target_scores(user, table),
                                    k=k)
  predictions = {"target": target, "top_ids": top_ids,
                 "top_scores": top_scores, "user_vector": user}
  return tf.estimator.EstimatorSpec(
      tf.estimator.ModeKeys.PREDICT, predictions=predictions,
      export_outputs={"predict": tf.estimator.export.PredictOutput(
          predictions)})


def input_fn_builder(f, setup, metadata, split="test", row_mask=None,
                     is_training=False, shard=None):
  """The input_fn of one split (its `row_mask` rows).

  Training: shuffled, repeated batches of f.train_batch_size with one
  training negative (f.sampler). Evaluation: one pass in file order, the
  last batch kept, the evaluation negatives seeded by f.eval_seed. `shard`
  (index, count): one trainer of a cluster, which reads its part of the
  `row_mask` rows (finetuning.trainer_rows) in its own order (seed +
  index).
  """
  sampled = setup.task == "recommendation" and f.eval == "sampled"
  num_negatives = 1 if is_training or not sampled else f.num_eval_negatives
  seed = f.seed if is_training else f.eval_seed
  if shard is not None:
    row_mask = finetuning.trainer_rows(row_mask, metadata["num_train"], shard)
    seed = None if seed is None else seed + shard[0]
  return data_loader.finetune_input_fn_builder(
      metadata["paths"][split], metadata["source_length"],
      setup.config.causal,
      f.train_batch_size if is_training else f.eval_batch_size,
      is_training=is_training,
      target_vocab_size=metadata["target_vocab_size"],
      num_negatives=num_negatives,
      sampler=f.sampler if is_training else "uniform",
      target_frequencies=metadata.get("train_target_frequencies",
                                      metadata["target_frequencies"]),
      rho=f.rho, distinct_negatives=f.distinct_negatives and num_negatives > 1,
      seed=seed, row_mask=row_mask,
      cls_at_start=setup.cls_position == "start")


# ---------------------------------------------------------------------------
# The steps of a run
# ---------------------------------------------------------------------------


def _checked_options(options):
  """The options as a namedtuple, checked before any data is read."""
  f = script_flags.options_tuple(options, define_flags)
  training_utils.check_positive({name: getattr(f, name) for name in (
      "num_train_steps", "num_train_epochs", "train_batch_size",
      "eval_batch_size", "eval_every_steps", "num_labelled_users")})
  training_utils.set_process_threads(f.intra_op_threads, f.inter_op_threads)
  training_utils.check_cluster_run(training_utils.tf_config_task(),
                                   f.do_train, f.do_eval)
  training_utils.check_writable_dir(f.output_dir, "--output_dir")
  return script_flags.with_seeds(f)


def _validation_every(f, num_steps):
  return f.eval_every_steps or max(1, num_steps // 10)


def _make_estimator(f, setup, metadata, checkpoint_every=None):
  """(Estimator, its model_dir); `checkpoint_every`: at most this many
  steps between checkpoints (the cluster's validation cadence)."""
  model_fn = model_fn_builder(
      setup.config, setup.init_checkpoint, setup.method, setup.insertion,
      setup.cardinality, setup.task, metadata["target_vocab_size"],
      loss=f.loss, learning_rate=f.learning_rate, beta1=f.beta1,
      eval_protocol=f.eval, top_k=f.top_k, predict_top_k=f.predict_top_k,
      task_patch=setup.task_patch,
      cls_at_start=setup.cls_position == "start",
      user_vector=setup.user_vector)
  model_dir, tf_random_seed = f.output_dir, f.tf_random_seed
  if setup.task_patch is not None:
    # A fresh directory without checkpoints: the Estimator then initializes
    # from backbone + patch instead of restoring a fine-tuned checkpoint.
    model_dir = os.path.join(f.output_dir, TASK_PATCH_EVAL_DIR)
    if tf.train.latest_checkpoint(model_dir):
      raise finetuning.CompatibilityError(
          "%s holds a checkpoint; remove it" % model_dir)
    if tf_random_seed is None:
      tf_random_seed = setup.patch_description.get("tf_random_seed")
  estimator = training_utils.make_estimator(
      model_fn, model_dir, save_checkpoints_steps=min(
          f.save_checkpoints_steps, checkpoint_every or
          f.save_checkpoints_steps),
      save_summary_steps=f.save_summary_steps,
      keep_checkpoint_max=f.keep_checkpoint_max,
      tf_random_seed=tf_random_seed, intra_op_threads=f.intra_op_threads,
      inter_op_threads=f.inter_op_threads, save_graph_def=f.save_graph_def)
  return estimator, model_dir


def train(f, setup, metadata, estimator, plan, num_steps, cluster_task=None):
  """Trains with periodic validation; returns the plan of training rows.

  One process: the validation runs in the training session
  (BestCheckpointHook: every --eval_every_steps, early stopping). Under
  TF_CONFIG: train_and_evaluate; this trainer reads its shard of the
  training rows, and the evaluator validates each checkpoint
  (BestCheckpointExporter), or evaluates the test split when there is no
  validation split.
  """
  hooks = [training_utils.ProgressHook(
      "total_loss:0", f.train_batch_size, f.log_step_count_steps, num_steps,
      estimator.model_dir)]
  validation_input_fn = None
  if plan["validation_mask"] is not None:
    validation_input_fn = input_fn_builder(f, setup, metadata, split="train",
                                           row_mask=plan["validation_mask"])
  metric = finetuning.selection_metric(setup.task, f.selection_metric,
                                       f.top_k)
  best_dir = os.path.join(f.output_dir, finetuning.BEST_DIR)
  if cluster_task is None and validation_input_fn is not None:
    hooks.append(training_utils.BestCheckpointHook(
        estimator, validation_input_fn,
        every_n_steps=_validation_every(f, num_steps), metric=metric,
        best_dir=best_dir, patience=f.early_stopping_patience, log=print,
        validate_at_start=f.validate_at_start))
  shard = training_utils.training_shard(cluster_task)
  train_input_fn = input_fn_builder(f, setup, metadata, split="train",
                                    row_mask=plan["train_mask"],
                                    is_training=True, shard=shard)
  logging.info("Training %s for %d steps of batch %d (%d training "
               "examples)", setup.method, num_steps, f.train_batch_size,
               plan["num_train"])
  with training_utils.data_loss_guard(_data_files(metadata)):
    if cluster_task is None:
      estimator.train(train_input_fn, max_steps=num_steps, hooks=hooks)
    else:
      finetuning.log_cluster_task(f, plan, num_steps, cluster_task, shard,
                                  _validation_every(f, num_steps))
      if validation_input_fn is None and not metadata["num_test"]:
        raise finetuning.CompatibilityError(
            "under TF_CONFIG the evaluator evaluates a validation split "
            "(--validation_fraction) or the test split; both are empty")
      selects = validation_input_fn is not None  # else: the test split
      training_utils.train_and_evaluate(
          estimator, train_input_fn, num_steps, hooks,
          validation_input_fn if selects else input_fn_builder(
              f, setup, metadata),
          f.eval_throttle_secs, cluster_task, f.chief_waits_for_workers_secs,
          eval_name="validation" if selects else "test",
          exporters=[training_utils.BestCheckpointExporter(
              metric, best_dir, log=print)] if selects else ())
  return {k: v for k, v in plan.items() if "mask" not in k}


def _data_files(metadata):
  return [metadata["paths"]["train"], metadata["paths"]["test"]]


def evaluate(f, setup, metadata, estimator, checkpoint, plan=None):
  """Test metrics of `checkpoint`, written, printed beside the reference."""
  with training_utils.data_loss_guard(_data_files(metadata)):
    results = estimator.evaluate(
        input_fn_builder(f, setup, metadata), name="test",
        checkpoint_path=checkpoint,
        hooks=[training_utils.EvaluationProgressHook(
            "evaluating the test split", metadata["num_test"],
            f.eval_batch_size)])
  classification = setup.task == "classification"
  reference = baselines.test_reference(
      metadata, classification, f.eval, f.num_eval_negatives, f.eval_seed,
      f.eval_batch_size, f.distinct_negatives, f.top_k)
  from_patch = setup.task_patch is not None
  summary = finetuning.test_summary(
      f, setup, metadata, results, reference, plan,
      validation=(None if from_patch else
                  finetuning.read_selection(estimator.model_dir)))
  training_utils.write_json_atomic(
      os.path.join(f.output_dir, finetuning.PATCH_METRICS_FILE if from_patch
                   else finetuning.METRICS_FILE), summary)
  print(training_utils.format_metrics_table(
      summary["metrics"], title="Test metrics of %s (%s, %s, %d examples; "
      "reference: the same score for every user, by training frequency)" % (
          setup.method, setup.task, summary["eval"], metadata["num_test"]),
      reference=reference))
  return summary


def export_saved_model(f, setup, metadata, checkpoint):
  if checkpoint is None:
    raise finetuning.CompatibilityError(
        "--export_dir exports the fine-tuned checkpoint of --output_dir %s; "
        "there is none" % f.output_dir)
  serving.export_saved_model(
      f.export_dir, checkpoint, setup.config, setup.method, setup.insertion,
      setup.cardinality, setup.task, metadata["paths"]["item_vocab"],
      metadata["paths"]["target_vocab"], metadata["source_length"],
      top_k=f.predict_top_k)
  print("SavedModel: %s (python -m serving predict --saved_model=%s "
        "--input_csv=... --output=...)" % (f.export_dir, f.export_dir))


def predict(f, setup, metadata, estimator, checkpoint):
  """predictions.jsonl in the format of `python -m serving predict`."""
  path = os.path.join(f.output_dir, finetuning.PREDICTIONS_FILE)
  tokens = data_loader.Vocabulary.load(
      metadata["paths"]["target_vocab"]).tokens
  count = 0
  with training_utils.data_loss_guard(_data_files(metadata)), \
      data_loader.atomic_text_writer(path) as writer:
    for prediction in estimator.predict(input_fn_builder(f, setup, metadata),
                                        checkpoint_path=checkpoint,
                                        yield_single_examples=True):
      writer.write(finetuning.prediction_record(prediction, tokens) + "\n")
      count += 1
  logging.info("Wrote %d predictions to %s", count, path)


def run(options):
  """Everything `main` does.

  Args:
    options: {flag name: value}, e.g. `default_options(data_dir=...,
      output_dir=..., init_checkpoint=...)`; names left out take the flag's
      default.

  Returns:
    dict with "parameters" (parameter_report), "plan" (training rows, when
    trained), "metrics" (the metrics.json contents, when evaluated),
    "task_patch" (task_patch.json, when exported), "saved_model".
  """
  f = _checked_options(options)
  metadata = data_loader.load_metadata(f.data_dir, data_loader.FINETUNE)
  tf.io.gfile.makedirs(f.output_dir)
  setup = finetuning.resolve_setup(f, metadata)
  outputs = {"parameters": finetuning.write_parameter_report(
      f.output_dir, setup, metadata)}
  cluster_task = training_utils.tf_config_task()
  plan = num_steps = checkpoint_every = None
  if f.do_train:
    plan, num_steps = finetuning.plan_training(metadata, f)
    if cluster_task is not None and plan["validation_mask"] is not None:
      # The evaluator validates checkpoints: one every validation step.
      checkpoint_every = _validation_every(f, num_steps)
  estimator, model_dir = _make_estimator(f, setup, metadata, checkpoint_every)
  if f.do_train:
    outputs["plan"] = train(f, setup, metadata, estimator, plan, num_steps,
                            cluster_task)
  if cluster_task is not None and cluster_task[0] != "evaluator":
    logging.info("%s task %d done", *cluster_task[:2])
    return outputs
  checkpoint = (finetuning.selected_checkpoint(model_dir)
                if setup.task_patch is None else None)
  if f.do_eval and metadata["num_test"] == 0:
    logging.warning("the test split is empty: nothing to evaluate")
  elif f.do_eval:
    outputs["metrics"] = evaluate(f, setup, metadata, estimator, checkpoint,
                                  outputs.get("plan"))
  if f.do_train and f.export_task_patch:
    outputs["task_patch"] = finetuning.export_setup_patch(f, setup, metadata,
                                                          checkpoint)
  if f.export_dir:
    export_saved_model(f, setup, metadata, checkpoint)
    outputs["saved_model"] = f.export_dir
  if f.do_predict and metadata["num_test"]:
    predict(f, setup, metadata, estimator, checkpoint)
  return outputs


def default_options(**overrides):
  """{flag name: default} with `overrides`: the options of `run`."""
  return script_flags.default_options(define_flags, **overrides)

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

FLAGS_OF_FINETUNING = script_flags.flag_table("""
# The backbone.
--model_config_file (string)
    Backbone configuration JSON; default: model_config.json beside
    --init_checkpoint, else the checkpoint's shapes.
--backbone (enum)
    nextitnet (causal) or grec (non-causal); needed when the checkpoint has no
    model_config.json (the authors' checkpoints).
# What is trained, and how.
--method (enum; default: peterrec)
    What is restored, patched and trained:
--insertion (enum)
    Patch insertion; default serial for nextitnet, parallel for grec (as the
    original scripts).
--cardinality (integer; default: 1)
    Branches of each model patch (1 = ResNet-style).
--cls_position (enum; default: end)
    Where the causal network's [CLS] slot sits: end (the original: its state
    has seen every item) or start (the paper's ablation: it sees none).
--user_vector (enum; default: cls)
    The user representation fed to the head: cls (the [CLS] slot's state, the
    original) or mean (the mean of every position's state; docs/DEVIATIONS.md
    F13).
--task (enum)
    recommendation (cold-start targets) or classification (class labels).
    Default: the task the dataset was converted as (its metadata.json;
    convert_csv --task); a flag that contradicts it, the task patch or the
    checkpoint is an error.
--loss (enum; default: bce)
    bce (one sampled negative, the original), bpr (with --sampler=lambdafm: the
    LambdaFM script), softmax (cross-entropy over all targets).
--sampler (enum; default: uniform)
    Training negatives: uniform, or lambdafm (static, by training-split target
    frequency rank).
--rho (float; default: 0.3)
    LambdaFM temperature.
# Validation and few labels.
--validation_fraction (float; default: 0.1)
    Share of the training users (of the rows when the dataset was split by row)
    held out as a validation split, seeded by --split_seed; evaluated every
    --eval_every_steps, the best checkpoint is the one tested, exported and
    served. 0: no validation, the last checkpoint (the original's protocol).
    Under TF_CONFIG the evaluator validates each checkpoint it reads and keeps
    the best the same way (docs/SCALE.md).
--split_seed (integer; default: 10)
    Seed of the validation split.
--validate_at_start (bool; default: false)
    Also validate the restored model before the first training step (the
    curve's step-0 point; about 3 s of start-up at the demo size).
--eval_every_steps (integer)
    Validation cadence; default a tenth of the training steps. Under TF_CONFIG
    the chief also writes a checkpoint this often, and the evaluator validates
    the checkpoints (the ones it reads: a slow validation skips some).
--selection_metric (string)
    Validation metric that picks the best checkpoint (higher is better);
    default accuracy for classification, hr@<top_k> for recommendation.
--early_stopping_patience (integer; default: 3)
    Stop after this many validations in a row without improvement; 0: never.
    One process only: under TF_CONFIG the cluster trains every step (the best
    checkpoint is still the one tested).
--labelled_fraction (float; default: 1.0)
    Few labels: train on this share of the training users left after the
    validation split (drawn with --seed); the validation and test splits do not
    change.
--num_labelled_users (integer)
    Few labels: train on this many users instead of --labelled_fraction.
# Test evaluation.
--eval (enum; default: sampled)
    Recommendation protocol: sampled (negatives + the positive, the paper) or
    full (all target ids).
--num_eval_negatives (integer; default: 99)
    Sampled protocol: negatives per test example.
--distinct_negatives (bool; default: false)
    Sampled protocol: draw the negatives without replacement (duplicates
    inflate the metrics).
--eval_seed (integer; default: 12345)
    Seed of the evaluation negatives (same seed, same metrics).
# Outputs.
--predict_top_k (integer; default: 10)
    Target ids per prediction.
--export_dir (string)
    Write a SavedModel of the fine-tuned model here (raw item-id strings in,
    top-k target ids and scores out; see serving.py). With --do_train=false,
    exports the checkpoint of --output_dir that the run selected (best/, else
    the latest).
--export_task_patch (bool; default: true)
    After training, write task_patch/ (only what the task trained).
--task_patch (string)
    Evaluate/predict an exported task_patch/ directory with the backbone
    --init_checkpoint (default: the one the patch records); needs
    --do_train=false.
""", enums={"backbone": finetuning.BACKBONES, "method": finetuning.METHODS,
            "insertion": finetuning.INSERTIONS,
            "cls_position": finetuning.CLS_POSITIONS,
            "user_vector": modeling.USER_VECTORS, "task": finetuning.TASKS,
            "loss": finetuning.LOSSES, "sampler": finetuning.SAMPLERS,
            "eval": finetuning.EVAL_PROTOCOLS})


def define_flags(flag_values=flags.FLAGS):
  """Defines the command-line flags in `flag_values` (read only by `main`)."""
  script_flags.define_shared_flags(
      flag_values, defaults={"learning_rate": 0.001, "train_batch_size": 64,
                             "num_train_epochs": 5.0,
                             # The evaluator validates every checkpoint it
                             # can; a fine-tuning run is short enough for
                             # the chief to finish before a worker starts.
                             "eval_throttle_secs": 1,
                             "chief_waits_for_workers_secs": 120},
      default_notes={name: "the backbone's configuration" for name in
                     ("channels", "dilations", "kernel_size")})
  script_flags.define_table(
      flag_values, FLAGS_OF_FINETUNING,
      notes={"method": "; ".join(finetuning.describe_methods()) + "."})


main = script_flags.main_function(run, define_flags, USER_ERRORS)

if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir", "output_dir"])
  app.run(main)
