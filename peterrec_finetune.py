r"""PeterRec fine-tuning: model patches on a pretrained NextItNet/GRec backbone.

The second half of the workflow: the pretrained network is restored and
frozen, small model patches (`mp_1`, `mp_2` in every residual block) are
inserted, and only the patches, the `layer_norm2` parameters and the target
head are trained. The paper's baselines share the same graph and differ
only in what is restored and trained: `finetuning.METHOD_TABLE` (shown by
`--helpfull` under `--method`).

The task (recommendation: cold-start target items; classification: class
labels such as a gender) is the one the dataset was converted as. Loss: BCE
with one sampled negative (the original; `--loss=bpr --sampler=lambdafm` is
its LambdaFM script, `--loss=softmax` cross-entropy over all targets).
Validation on held-out training users picks the checkpoint that is tested,
exported and served. Test metrics on the whole test split: accuracy over all
classes, or MRR/HR/NDCG@k of the positive among 99 seeded negatives
(`--eval=sampled`, the paper) or among all targets (`--eval=full`).

  python peterrec_finetune.py --data_dir=runs/demo_finetune_data \
      --init_checkpoint=$DEMO/checkpoints/model_nextitnet_transfer_pretrain.ckpt \
      --backbone=nextitnet --method=peterrec --insertion=serial \
      --output_dir=runs/demo_peterrec --num_train_steps=200 --train_batch_size=8

Outputs in --output_dir: checkpoints (the best validated one in `best/`),
`parameters.json`, `metrics.json` (printed beside a user-independent
reference), `task_patch/` (only what the task trained, plus
`task_patch.json` naming its backbone). `--task_patch=<dir>
--do_train=false` evaluates / predicts with backbone + patch.
"""
import collections
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

import baselines
import data_loader
import finetuning
import serving
import training_utils
from ops import checkpoint as checkpoint_lib
from ops import finetune as finetune_ops
from ops import heads
from ops import modeling

DETERMINISTIC_SEED = 10  # --seed / --tf_random_seed under --deterministic
TASK_PATCH_EVAL_DIR = "task_patch_eval"


# ---------------------------------------------------------------------------
# model_fn and input_fn builders
# ---------------------------------------------------------------------------


def model_fn_builder(model_config, init_checkpoint, method, insertion,
                     cardinality, task, target_vocab_size, loss="bce",
                     learning_rate=0.001, beta1=0.9, eval_protocol="sampled",
                     top_k=5, predict_top_k=10, task_patch=None,
                     cls_at_start=False, user_vector="cls"):
  """Returns the Estimator `model_fn` of PeterRec fine-tuning.

  Args:
    model_config: modeling.ModelConfig of the backbone.
    init_checkpoint: pretrained backbone checkpoint prefix (None for the
      methods that restore nothing).
    method, insertion, cardinality: finetuning.METHOD_TABLE, patches.
    task: "recommendation" or "classification".
    target_vocab_size: target (or class) vocabulary size, with id 0.
    loss: ops.finetune.LOSSES.
    learning_rate, beta1: Adam.
    eval_protocol: "sampled" (features["negatives"] + the positive) or
      "full" (all targets); classification reports accuracy.
    top_k: cut-off of MRR/HR/NDCG; predict_top_k: targets per prediction.
    task_patch: None, or (patch prefix, backbone prefix or None): restore
      the trained variables from the patch, the others from the backbone.
    cls_at_start, user_vector: the user vector (ops.modeling).

  Features (data_loader.finetune_input_fn_builder): rows int32 [B, L],
  target int32 [B], negatives int32 [B, N].
  """
  if task not in finetuning.TASKS:
    raise ValueError("task must be one of %s, got %r" %
                     (finetuning.TASKS, task))
  if finetuning.uses_patches(method) and (
      insertion not in finetuning.INSERTIONS):
    raise ValueError("insertion must be one of %s, got %r" %
                     (finetuning.INSERTIONS, insertion))
  if (finetuning.restores_backbone(method) and task_patch is None and
      not init_checkpoint):
    raise ValueError("method %s restores a pretrained backbone: give "
                     "init_checkpoint" % method)

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
      top_scores, top_ids = tf.nn.top_k(
          finetune_ops.target_scores(user, table),
          k=min(predict_top_k, target_vocab_size - 1))
      predictions = {"target": target, "top_ids": top_ids,
                     "top_scores": top_scores, "user_vector": user}
      return tf.estimator.EstimatorSpec(
          mode, predictions=predictions,
          export_outputs={"predict": tf.estimator.export.PredictOutput(
              predictions)})
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


def eval_input_fn(metadata, config, task, eval_protocol, num_eval_negatives,
                  distinct_negatives, eval_seed, batch_size, split="test",
                  row_mask=None, cls_at_start=False):
  """One seeded pass over a split (its `row_mask` rows), last batch kept."""
  num_negatives = 1
  if task == "recommendation" and eval_protocol == "sampled":
    num_negatives = num_eval_negatives
  return data_loader.finetune_input_fn_builder(
      metadata["paths"][split], metadata["source_length"], config.causal,
      batch_size, is_training=False,
      target_vocab_size=metadata["target_vocab_size"],
      num_negatives=num_negatives, sampler="uniform",
      distinct_negatives=(distinct_negatives and num_negatives > 1),
      seed=eval_seed, row_mask=row_mask, cls_at_start=cls_at_start)


def _eval_input_fn(f, setup, metadata, **kwargs):
  return eval_input_fn(metadata, setup.config, setup.task, f.eval,
                       f.num_eval_negatives, f.distinct_negatives,
                       f.eval_seed, f.eval_batch_size,
                       cls_at_start=setup.cls_position == "start", **kwargs)


def _train_input_fn(f, setup, metadata, row_mask):
  return data_loader.finetune_input_fn_builder(
      metadata["paths"]["train"], metadata["source_length"],
      setup.config.causal, f.train_batch_size, is_training=True,
      target_vocab_size=metadata["target_vocab_size"], num_negatives=1,
      sampler=f.sampler,
      target_frequencies=metadata.get("train_target_frequencies",
                                      metadata["target_frequencies"]),
      rho=f.rho, seed=f.seed, row_mask=row_mask,
      cls_at_start=setup.cls_position == "start")


# ---------------------------------------------------------------------------
# The steps of a run
# ---------------------------------------------------------------------------


def _checked_options(options):
  """The options as a namedtuple, checked before any data is read."""
  unknown = sorted(set(options) - set(default_options()))
  if unknown:
    raise ValueError("unknown options %s" % unknown)
  f = collections.namedtuple("Options", sorted(options))(**options)
  training_utils.check_positive({name: getattr(f, name) for name in (
      "num_train_steps", "num_train_epochs", "train_batch_size",
      "eval_batch_size", "eval_every_steps", "num_labelled_users")})
  training_utils.set_process_threads(f.intra_op_threads, f.inter_op_threads)
  cluster_task = training_utils.tf_config_task()
  if cluster_task is not None and f.do_train:
    # Estimator.train under TF_CONFIG would wait for a cluster that nothing
    # here starts; only nextitnet_pretrain.py runs train_and_evaluate.
    raise finetuning.CompatibilityError(
        "TF_CONFIG is set (%s task %d), but fine-tuning trains in one process "
        "(the backbone is frozen: a step costs a few percent of pretraining); "
        "unset TF_CONFIG" % cluster_task[:2])
  training_utils.check_writable_dir(f.output_dir, "--output_dir")
  if f.deterministic:
    training_utils.enable_determinism()
    f = f._replace(
        seed=DETERMINISTIC_SEED if f.seed is None else f.seed,
        tf_random_seed=(DETERMINISTIC_SEED if f.tf_random_seed is None
                        else f.tf_random_seed))
    logging.info("--deterministic: op determinism on, --seed=%d, "
                 "--tf_random_seed=%d", f.seed, f.tf_random_seed)
  return f


def _load_dataset(data_dir):
  metadata = data_loader.load_metadata(data_dir)
  if metadata["kind"] != data_loader.FINETUNE:
    raise finetuning.CompatibilityError(
        "%s holds a %s dataset, not a fine-tuning one" %
        (data_dir, metadata["kind"]))
  return metadata


def _write_parameter_report(f, setup, metadata):
  report = finetuning.parameter_report(
      setup.config, setup.method, setup.insertion, setup.cardinality,
      metadata["target_vocab_size"])
  print(finetuning.format_parameter_report(report))
  patched = finetuning.uses_patches(setup.method)
  training_utils.write_json_atomic(
      os.path.join(f.output_dir, finetuning.PARAMETERS_FILE
                   if setup.task_patch is None
                   else finetuning.PATCH_PARAMETERS_FILE),
      dict(report, task=setup.task,
           insertion=setup.insertion if patched else None,
           cardinality=setup.cardinality if patched else None,
           model_config=setup.config.to_dict(),
           config_source=setup.config_source))
  return report


def _make_estimator(f, setup, metadata):
  """(Estimator, its model_dir)."""
  model_fn = model_fn_builder(
      setup.config, setup.init_checkpoint, setup.method, setup.insertion,
      setup.cardinality, setup.task, metadata["target_vocab_size"],
      loss=f.loss, learning_rate=f.learning_rate, beta1=f.beta1,
      eval_protocol=f.eval, top_k=f.top_k, predict_top_k=f.predict_top_k,
      task_patch=setup.task_patch,
      cls_at_start=setup.cls_position == "start",
      user_vector=setup.user_vector)
  model_dir = f.output_dir
  tf_random_seed = f.tf_random_seed
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
      model_fn, model_dir, save_checkpoints_steps=f.save_checkpoints_steps,
      save_summary_steps=f.save_summary_steps,
      keep_checkpoint_max=f.keep_checkpoint_max,
      tf_random_seed=tf_random_seed, intra_op_threads=f.intra_op_threads,
      inter_op_threads=f.inter_op_threads, save_graph_def=f.save_graph_def)
  return estimator, model_dir


def train(f, setup, metadata, estimator):
  """Trains with periodic validation; returns the plan of training rows."""
  if metadata["num_train"] == 0:
    raise finetuning.CompatibilityError("the training split of %s is empty"
                                        % f.data_dir)
  plan = finetuning.plan_training_rows(metadata, f)
  num_steps = f.num_train_steps or max(
      1, int(f.num_train_epochs * plan["num_train"] / f.train_batch_size))
  hooks = [training_utils.ProgressHook(
      "total_loss:0", f.train_batch_size, f.log_step_count_steps, num_steps,
      estimator.model_dir)]
  if plan["validation_mask"] is not None:
    hooks.append(training_utils.BestCheckpointHook(
        estimator, _eval_input_fn(f, setup, metadata, split="train",
                                  row_mask=plan["validation_mask"]),
        every_n_steps=f.eval_every_steps or max(1, num_steps // 10),
        metric=finetuning.selection_metric(setup.task, f.selection_metric,
                                           f.top_k),
        best_dir=os.path.join(f.output_dir, finetuning.BEST_DIR),
        patience=f.early_stopping_patience, log=print))
  logging.info("Training %s for %d steps of batch %d (%d training "
               "examples)", setup.method, num_steps, f.train_batch_size,
               plan["num_train"])
  with training_utils.data_loss_guard(_data_files(metadata)):
    estimator.train(_train_input_fn(f, setup, metadata, plan["train_mask"]),
                    max_steps=num_steps, hooks=hooks)
  return {k: v for k, v in plan.items() if "mask" not in k}


def _data_files(metadata):
  return [metadata["paths"]["train"], metadata["paths"]["test"]]


def _float_metrics(results):
  return {k: (float(v) if k != "num_examples" else int(v))
          for k, v in results.items() if k != "global_step"}


def evaluate(f, setup, metadata, estimator, checkpoint, plan=None):
  """Test metrics of `checkpoint`, written, printed beside the reference."""
  with training_utils.data_loss_guard(_data_files(metadata)):
    results = estimator.evaluate(
        _eval_input_fn(f, setup, metadata), name="test",
        checkpoint_path=checkpoint,
        hooks=[training_utils.EvaluationProgressHook(
            "evaluating the test split", metadata["num_test"],
            f.eval_batch_size)])
  metrics = _float_metrics(results)
  classification = setup.task == "classification"
  protocol = "accuracy over all classes" if classification else f.eval
  reference = baselines.test_reference(
      metadata, classification, f.eval, f.num_eval_negatives, f.eval_seed,
      f.eval_batch_size, f.distinct_negatives, f.top_k)
  from_patch = setup.task_patch is not None
  summary = {
      "method": setup.method, "task": setup.task, "eval": protocol,
      "insertion": (setup.insertion if finetuning.uses_patches(setup.method)
                    else None),
      "num_eval_negatives": (f.num_eval_negatives if protocol == "sampled"
                             else None),
      "distinct_negatives": bool(f.distinct_negatives),
      "eval_seed": f.eval_seed, "global_step": int(results["global_step"]),
      "num_test": metadata["num_test"], "metrics": metrics,
      "user_independent_reference": reference,
      "task_patch": f.task_patch or None,
      "validation": (None if from_patch else
                     finetuning.read_selection(estimator.model_dir)),
  }
  if plan is not None:
    summary["plan"] = plan
  training_utils.write_json_atomic(
      os.path.join(f.output_dir, finetuning.PATCH_METRICS_FILE if from_patch
                   else finetuning.METRICS_FILE), summary)
  print(training_utils.format_metrics_table(
      metrics, title="Test metrics of %s (%s, %s, %d examples; reference: "
      "the same score for every user, by training frequency)" % (
          setup.method, setup.task, protocol, metadata["num_test"]),
      reference=reference))
  return summary


def export_task_patch(f, setup, metadata, checkpoint):
  description = finetuning.export_task_patch(
      checkpoint, f.output_dir, setup.config, setup.method, setup.insertion,
      setup.cardinality, setup.task, metadata["target_vocab_size"],
      setup.init_checkpoint,
      extra={"tf_random_seed": f.tf_random_seed, "eval_seed": f.eval_seed,
             "cls_position": setup.cls_position,
             "user_vector": setup.user_vector,
             "global_step": int(checkpoint_lib.reader(
                 checkpoint).get_tensor("global_step"))})
  print("Task patch: %s (%d bytes; fine-tuned checkpoint %d bytes, %.2f%%)"
        % (os.path.join(f.output_dir, finetuning.TASK_PATCH_DIR),
           description["task_patch_bytes"],
           description["finetuned_checkpoint_bytes"],
           100.0 * description["task_patch_bytes"] /
           description["finetuned_checkpoint_bytes"]))
  return description


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
  lines = []
  with training_utils.data_loss_guard(_data_files(metadata)):
    for prediction in estimator.predict(_eval_input_fn(f, setup, metadata),
                                        checkpoint_path=checkpoint,
                                        yield_single_examples=True):
      lines.append(json.dumps({
          "target": tokens[int(prediction["target"])],
          "top_ids": [tokens[i] for i in prediction["top_ids"]],
          "top_index": prediction["top_ids"].tolist(),
          "top_scores": [round(float(s), 6)
                         for s in prediction["top_scores"]],
      }) + "\n")
  training_utils.write_text_atomic(path, "".join(lines))
  logging.info("Wrote %d predictions to %s", len(lines), path)


def run(options):
  """Everything `main` does, from a dict of option values.

  Args:
    options: {flag name: value}, e.g. `dict(default_options(), data_dir=...,
      output_dir=..., init_checkpoint=...)`.

  Returns:
    dict with "parameters" (parameter_report), "plan" (training rows, when
    trained), "metrics" (the metrics.json contents, when evaluated),
    "task_patch" (task_patch.json, when exported), "saved_model".
  """
  f = _checked_options(options)
  metadata = _load_dataset(f.data_dir)
  tf.io.gfile.makedirs(f.output_dir)
  setup = finetuning.resolve_setup(f, metadata)
  outputs = {"parameters": _write_parameter_report(f, setup, metadata)}
  estimator, model_dir = _make_estimator(f, setup, metadata)
  if f.do_train:
    outputs["plan"] = train(f, setup, metadata, estimator)
  checkpoint = (finetuning.selected_checkpoint(model_dir)
                if setup.task_patch is None else None)
  if f.do_eval and metadata["num_test"] == 0:
    logging.warning("the test split is empty: nothing to evaluate")
  elif f.do_eval:
    outputs["metrics"] = evaluate(f, setup, metadata, estimator, checkpoint,
                                  outputs.get("plan"))
  if f.do_train and f.export_task_patch:
    outputs["task_patch"] = export_task_patch(f, setup, metadata, checkpoint)
  if f.export_dir:
    export_saved_model(f, setup, metadata, checkpoint)
    outputs["saved_model"] = f.export_dir
  if f.do_predict and metadata["num_test"]:
    predict(f, setup, metadata, estimator, checkpoint)
  return outputs


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _define_data_and_backbone_flags(fv):
  flags.DEFINE_string(
      "data_dir", None, "Fine-tuning dataset written by "
      "tfrecord_tools.convert_csv --kind=finetune.", flag_values=fv)
  flags.DEFINE_string(
      "output_dir", None, "Model directory: checkpoints, metrics.json, "
      "parameters.json, task_patch/.", flag_values=fv)
  flags.DEFINE_string(
      "init_checkpoint", None, "Pretrained backbone: a checkpoint prefix or "
      "the pretraining model_dir. With --task_patch: the backbone to serve "
      "the patch with (default: the one the patch records).", flag_values=fv)
  flags.DEFINE_string(
      "model_config_file", None, "Backbone configuration JSON; default: "
      "model_config.json beside --init_checkpoint, else the checkpoint's "
      "shapes.", flag_values=fv)
  flags.DEFINE_enum(
      "backbone", None, list(finetuning.BACKBONES), "nextitnet (causal) or "
      "grec (non-causal); needed when the checkpoint has no model_config.json "
      "(the authors' checkpoints).", flag_values=fv)
  flags.DEFINE_integer("channels", None, "Override the channels C.",
                       flag_values=fv)
  flags.DEFINE_list("dilations", None, "Override the dilations.",
                    flag_values=fv)
  flags.DEFINE_integer("kernel_size", None, "Override the kernel size.",
                       flag_values=fv)
  flags.DEFINE_enum(
      "conv_implementation", None, ["atrous", "conv2d", "matmul"],
      "Convolution kernels (same variables; matmul is fastest on CPU). "
      "Default: the configuration's.", flag_values=fv)


def _define_method_flags(fv):
  flags.DEFINE_enum(
      "method", "peterrec", list(finetuning.METHODS), "What is restored, "
      "patched and trained: " + "; ".join(finetuning.describe_methods()) +
      ".",
      flag_values=fv)
  flags.DEFINE_enum(
      "insertion", None, list(finetuning.INSERTIONS), "Patch insertion; "
      "default serial for nextitnet, parallel for grec (as the original "
      "scripts).",
      flag_values=fv)
  flags.DEFINE_enum(
      "cls_position", "end", ["end", "start"], "Where the causal network's "
      "[CLS] slot sits: end (the original: its state has seen every item) or "
      "start (the paper's ablation: it sees none).", flag_values=fv)
  flags.DEFINE_enum(
      "user_vector", "cls", list(modeling.USER_VECTORS), "The user "
      "representation fed to the head: cls (the [CLS] slot's state, the "
      "original) or mean (the mean of every position's state; "
      "docs/DEVIATIONS.md F13).", flag_values=fv)
  flags.DEFINE_integer("cardinality", 1, "Branches of each model patch "
                       "(1 = ResNet-style).", flag_values=fv)
  flags.DEFINE_enum(
      "task", None, list(finetuning.TASKS), "recommendation (cold-start "
      "targets) or classification (class labels). Default: the task the "
      "dataset was "
      "converted as (its metadata.json; convert_csv --task); a flag that "
      "contradicts it, the task patch or the checkpoint is an error.",
      flag_values=fv)
  flags.DEFINE_enum(
      "loss", "bce", list(finetuning.LOSSES), "bce (one sampled negative, the "
      "original), bpr (with --sampler=lambdafm: the LambdaFM script), "
      "softmax (cross-entropy over all targets).", flag_values=fv)
  flags.DEFINE_enum(
      "sampler", "uniform", list(finetuning.SAMPLERS), "Training negatives: "
      "uniform, or "
      "lambdafm (static, by training-split target frequency rank).",
      flag_values=fv)


def _define_training_flags(fv):
  flags.DEFINE_float("rho", 0.3, "LambdaFM temperature.", flag_values=fv)
  flags.DEFINE_float("learning_rate", 0.001, "Adam learning rate.",
                     flag_values=fv)
  flags.DEFINE_float("beta1", 0.9, "Adam beta1.", flag_values=fv)
  flags.DEFINE_integer("train_batch_size", 64, "Training batch size (the "
                       "original's 512 is one step per epoch on small data).",
                       flag_values=fv)
  flags.DEFINE_integer("eval_batch_size", 512, "Evaluation batch size.",
                       flag_values=fv)
  flags.DEFINE_integer("num_train_steps", None, "Training steps; default "
                       "from --num_train_epochs.", flag_values=fv)
  flags.DEFINE_float("num_train_epochs", 5.0, "Epochs over the training "
                     "split when --num_train_steps is not given (the "
                     "validated best checkpoint is kept, so more epochs than "
                     "needed cost time, not accuracy).", flag_values=fv)


def _define_evaluation_flags(fv):
  flags.DEFINE_enum(
      "eval", "sampled", list(finetuning.EVAL_PROTOCOLS), "Recommendation protocol: "
      "sampled (negatives + the positive, the paper) or full (all target "
      "ids).", flag_values=fv)
  flags.DEFINE_integer("top_k", 5, "Cut-off of MRR/HR/NDCG.", flag_values=fv)
  flags.DEFINE_float(
      "validation_fraction", 0.1, "Share of the training users (of the rows "
      "when the dataset was split by row) held out as a validation split, "
      "seeded by --split_seed; evaluated every --eval_every_steps, the best "
      "checkpoint is the one tested, exported and served. 0: no "
      "validation, the last checkpoint (the original's protocol).",
      flag_values=fv)
  flags.DEFINE_integer("split_seed", 10, "Seed of the validation split.",
                       flag_values=fv)
  flags.DEFINE_integer("eval_every_steps", None, "Validation cadence; "
                       "default a tenth of the training steps.",
                       flag_values=fv)
  flags.DEFINE_string(
      "selection_metric", None, "Validation metric that picks the best "
      "checkpoint (higher is better); default accuracy for classification, "
      "hr@<top_k> for recommendation.", flag_values=fv)
  flags.DEFINE_integer("early_stopping_patience", 3, "Stop after this many "
                       "validations in a row without improvement; 0: never.",
                       flag_values=fv)
  flags.DEFINE_float(
      "labelled_fraction", 1.0, "Few labels: train on this share of the "
      "training users left after the validation split (drawn with --seed); "
      "the validation and test splits do not change.", flag_values=fv)
  flags.DEFINE_integer("num_labelled_users", None, "Few labels: train on "
                       "this many users instead of --labelled_fraction.",
                       flag_values=fv)
  flags.DEFINE_integer("num_eval_negatives", 99, "Sampled protocol: "
                       "negatives per test example.", flag_values=fv)
  flags.DEFINE_bool(
      "distinct_negatives", False, "Sampled protocol: draw the negatives "
      "without replacement (duplicates inflate the metrics).",
      flag_values=fv)
  flags.DEFINE_integer("eval_seed", 12345, "Seed of the evaluation "
                       "negatives (same seed, same metrics).", flag_values=fv)
  flags.DEFINE_integer("seed", None, "Seed of the training shuffle and "
                       "negatives.", flag_values=fv)
  flags.DEFINE_integer("tf_random_seed", None, "Graph-level seed "
                       "(initializers); unseeded by default, as the "
                       "original.", flag_values=fv)
  flags.DEFINE_bool(
      "deterministic", False, "tf.config.experimental.enable_op_determinism()"
      " and fixed seeds (--seed and --tf_random_seed default to %d): two "
      "runs give identical losses and metrics (README 'Reliability': the "
      "cost)." % DETERMINISTIC_SEED, flag_values=fv)


def _define_outputs_and_runtime_flags(fv):
  flags.DEFINE_bool("do_train", True, "Train.", flag_values=fv)
  flags.DEFINE_bool("do_eval", True, "Evaluate on the whole test split.",
                    flag_values=fv)
  flags.DEFINE_bool("do_predict", False, "Write the top targets of each "
                    "test example to predictions.jsonl (as `serving "
                    "predict`: target tokens in top_ids, their ids in "
                    "top_index).", flag_values=fv)
  flags.DEFINE_integer("predict_top_k", 10, "Target ids per prediction.",
                       flag_values=fv)
  flags.DEFINE_string(
      "export_dir", None, "Write a SavedModel of the fine-tuned model here "
      "(raw item-id strings in, top-k target ids and scores out; see "
      "serving.py). With --do_train=false, exports the checkpoint of "
      "--output_dir that the run selected (best/, else the latest).",
      flag_values=fv)
  flags.DEFINE_bool("export_task_patch", True, "After training, write "
                    "task_patch/ (only what the task trained).",
                    flag_values=fv)
  flags.DEFINE_string(
      "task_patch", None, "Evaluate/predict an exported task_patch/ "
      "directory with the backbone --init_checkpoint; needs "
      "--do_train=false.", flag_values=fv)
  flags.DEFINE_bool("save_graph_def", False, "Write graph.pbtxt and .meta "
                    "files with the checkpoints.", flag_values=fv)
  training_utils.define_runtime_flags(fv)


def define_flags(flag_values=flags.FLAGS):
  """Defines the command-line flags in `flag_values` (read only by `main`)."""
  for define in (_define_data_and_backbone_flags, _define_method_flags,
                 _define_training_flags, _define_evaluation_flags,
                 _define_outputs_and_runtime_flags):
    define(flag_values)


def default_options():
  """{flag name: default}: the options `run` takes, for tests and callers."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  return {name: flag_values[name].default for name in flag_values}


def main(argv):
  del argv
  training_utils.quiet_tensorflow()
  options = {name: flags.FLAGS[name].value for name in default_options()}
  try:
    run(options)
  except (finetuning.CompatibilityError, data_loader.DatasetError,
          training_utils.RunError) as e:
    sys.exit("error: %s" % e)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir", "output_dir"])
  app.run(main)
