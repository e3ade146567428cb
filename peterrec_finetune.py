r"""PeterRec fine-tuning: model patches on a pretrained NextItNet/GRec backbone.

The second half of the workflow (SPEC section 4): the pretrained network is
restored and frozen, small model patches (`mp_1`, `mp_2` in every residual
block) are inserted, and only the patches, the `layer_norm2` parameters and
the target head are trained. The paper's baselines share the same graph and
differ only in what is restored and what is trained:

  method     patches  restored from the backbone   trained
  ---------  -------  --------------------------  -------------------------------
  peterrec   yes      every variable without mp   head + mp + layer_norm2
  peterzero  yes      nothing (random init)       head + mp + layer_norm2
  scratch    no       nothing (random init)       everything
  fineall    no       the backbone                everything
  finecls    no       the backbone                head
  finelast1  no       the backbone                head + last residual block
  finelast2  no       the backbone                head + last two blocks

PeterZero is "PeterRec without pretraining": the same patched graph, the same
trainable set and the same budget, only the initial values of the frozen
backbone differ (random instead of pretrained), which isolates the effect of
pretraining. The original code has no PeterZero script; training the whole
network from random values (the SPEC's "training from scratch") is
`--method=scratch`. See docs/DEVIATIONS.md.

Tasks (`--task`):
  recommendation  cold-start target items. Loss: BCE with one uniformly
                  sampled negative (default, as the original); `--loss=bpr
                  --sampler=lambdafm` is the original's LambdaFM script.
  classification  user profile: the targets are class labels. The original
                  classifier (PeterRec_noncau_parallel_classifier.py) trains
                  with the same BCE and one sampled negative class; that is
                  the default here. `--loss=softmax` (cross-entropy over all
                  classes) is an option. Accuracy is top-1 over all classes.

Evaluation on the whole test set (the last partial batch included):
  --eval=sampled  99 uniform negatives (with replacement, or
                  `--distinct_negatives`) + the positive last; MRR@k, HR@k,
                  NDCG@k, ties counted against the positive (the paper).
  --eval=full     rank the positive among all target ids 1..T-1.
  classification  accuracy.
Negatives are drawn in the input pipeline with a fixed `--eval_seed`, so the
same model gives exactly the same metrics on every evaluation.

Example, from the authors' demo checkpoint (see README "## Fine-tuning"):

  python -m tfrecord_tools.convert_csv --kind=pretrain \
      --input_csv=$DEMO/history_sequences_20181014_fajie_transfer_pretrain_small.csv \
      --output_dir=runs/demo_pretrain_data
  python -m tfrecord_tools.convert_csv --kind=finetune \
      --input_csv=$DEMO/history_sequences_20181014_fajie_transfer_finetune_small.csv \
      --item_vocab=runs/demo_pretrain_data/item_vocab.txt \
      --output_dir=runs/demo_finetune_data
  python peterrec_finetune.py --data_dir=runs/demo_finetune_data \
      --init_checkpoint=$DEMO/checkpoints/model_nextitnet_transfer_pretrain.ckpt \
      --backbone=nextitnet --method=peterrec --insertion=serial \
      --output_dir=runs/demo_peterrec --num_train_steps=200 --train_batch_size=8

Outputs in --output_dir: Estimator checkpoints, `parameters.json`
(trainable / total parameters), `metrics.json` (final table), `task_patch/`
(only what the task trained, plus `task_patch.json` naming the backbone
checkpoint it belongs to). `--task_patch=<dir> --init_checkpoint=<backbone>
--do_train=false` evaluates / predicts with backbone + patch.
"""
import collections
import hashlib
import json
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import baselines
import data_loader
import training_utils
from ops import blocks
from ops import checkpoint as checkpoint_lib
from ops import heads
from ops import metrics as metrics_lib
from ops import modeling
from ops import networks

METHODS = ("peterrec", "peterzero", "scratch", "fineall", "finecls",
           "finelast1", "finelast2")
PATCH_METHODS = ("peterrec", "peterzero")
RANDOM_INIT_METHODS = ("peterzero", "scratch")
INSERTIONS = ("serial", "parallel")
TASKS = data_loader.TASKS
LOSSES = ("bce", "bpr", "softmax")
SAMPLERS = ("uniform", "lambdafm")
EVAL_PROTOCOLS = ("sampled", "full")
BACKBONES = {"nextitnet": True, "grec": False}  # name -> causal

# Created by the non-causal graph (as the original) and restored, never used:
# no gradient reaches them, so no method trains them.
UNUSED_VARIABLES = ("softmax_w", "softmax_b")

TASK_PATCH_DIR = "task_patch"
TASK_PATCH_PREFIX = "task_patch.ckpt"
TASK_PATCH_JSON = "task_patch.json"
FROZEN_BACKBONE_DIR = "frozen_backbone"
FROZEN_BACKBONE_PREFIX = "backbone.ckpt"
METRICS_FILE = "metrics.json"
PATCH_METRICS_FILE = "metrics_task_patch.json"
PARAMETERS_FILE = "parameters.json"
PATCH_PARAMETERS_FILE = "parameters_task_patch.json"
PREDICTIONS_FILE = "predictions.jsonl"
BEST_DIR = "best"  # the best validated checkpoint and best.json
DETERMINISTIC_SEED = 10  # --seed / --tf_random_seed under --deterministic
FLOAT_BYTES = 4

_BLOCK_RE = re.compile(r"^nextitnet_residual_blockdecoder_layer_(\d+)_(\d+)/")
_PATCH_RE = re.compile(r"(^|/)mp_\d+/")


class CompatibilityError(ValueError):
  """The pretrained checkpoint, the configuration and the data disagree."""


# ---------------------------------------------------------------------------
# Which variables a method restores and trains (pure functions on names)
# ---------------------------------------------------------------------------


def is_patch_variable(name):
  """True for model-patch variables (`.../mp_1/...`, `.../mp_2/...`).

  The original tests `"mp" in name`; on the names this graph creates the two
  tests agree, this one cannot match an unrelated name by accident.
  """
  return bool(_PATCH_RE.search(name))


def is_head_variable(name):
  return name.startswith(heads.TARGET_SCOPE + "/")


def block_index(name):
  """Layer id of the residual block a variable belongs to, or None."""
  match = _BLOCK_RE.match(name)
  return int(match.group(1)) if match else None


def uses_patches(method):
  return method in PATCH_METHODS


def restores_backbone(method):
  return method not in RANDOM_INIT_METHODS


def _check_method(method):
  if method not in METHODS:
    raise ValueError("method must be one of %s, got %r" % (METHODS, method))


def trainable_variables_for(method, variables, num_blocks):
  """The variables `method` trains, in the order of `variables`.

  peterrec / peterzero: the `target-item` head, every patch (`mp`) variable
  and every `layer_norm2` variable (SPEC section 4). finecls: the head.
  finelast1 / finelast2: the head and every variable of the last one / two
  residual blocks. fineall / scratch: everything. The unused `softmax_w`
  of the non-causal graph is never trained (it gets no gradient).

  Args:
    method: one of METHODS.
    variables: list of tf.Variable (the graph's trainable variables).
    num_blocks: number of residual blocks (len(config.dilations)).

  Returns:
    list of tf.Variable.
  """
  _check_method(method)
  selected = []
  for variable in variables:
    name = checkpoint_lib.variable_name(variable)
    if name in UNUSED_VARIABLES:
      continue
    if method in PATCH_METHODS:
      keep = (is_head_variable(name) or is_patch_variable(name) or
              "/layer_norm2/" in name)
    elif method == "finecls":
      keep = is_head_variable(name)
    elif method in ("finelast1", "finelast2"):
      last = 1 if method == "finelast1" else 2
      layer = block_index(name)
      keep = is_head_variable(name) or (layer is not None and
                                        layer >= num_blocks - last)
    else:  # fineall, scratch
      keep = True
    if keep:
      selected.append(variable)
  return selected


def count_parameters(variables):
  """Total number of scalars in `variables`."""
  return int(sum(np.prod(v.shape.as_list(), dtype=np.int64)
                 for v in variables))


# ---------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------


def build_finetune_model(context, config, method, insertion, cardinality,
                         target_vocab_size, cls_at_start=False,
                         user_vector="cls"):
  """The fine-tuning network: backbone (+ patches), user vector, head table.

  Args:
    context: int32 [batch_size, seq_length] = rows[:, :-1] of the SPEC layout.
    config: modeling.ModelConfig.
    method: one of METHODS (patches only for PATCH_METHODS).
    insertion: "serial" or "parallel" (used with patches).
    cardinality: branches of each patch.
    target_vocab_size: rows of the target table (with id 0).
    cls_at_start: causal only, the `[CLS]`-at-start ablation.
    user_vector: "cls" or "mean" (modeling.user_representation).

  Returns:
    (user_vectors float32 [B, width], target_table [target_vocab_size, width]).
  """
  patch = insertion if uses_patches(method) else None
  user, _ = networks.peterrec_user_vectors(context, config, patch=patch,
                                           cardinality=cardinality,
                                           cls_at_start=cls_at_start,
                                           pooling=user_vector)
  table = heads.target_embedding_table(target_vocab_size, config.hidden_size)
  return user, table


def _mask_unk(scores):
  """Scores [B, T] with column 0 (<UNK>, never a target) set to -inf."""
  unk = tf.fill(tf.stack([tf.shape(scores)[0], 1]), -np.inf)
  return tf.concat([unk, scores[:, 1:]], axis=1)


def _loss(loss_type, user, table, target, negatives):
  """Training loss of one batch (before the regularization term)."""
  if loss_type == "softmax":
    logits = _mask_unk(heads.all_target_scores(user, table))
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target,
                                                       logits=logits))
  pos_logits = heads.target_logits(user, table, target)
  neg_logits = heads.target_logits(user, table, negatives[:, 0])
  if loss_type == "bpr":
    return heads.bpr_loss(pos_logits, neg_logits)
  return heads.bce_loss(pos_logits, neg_logits)


def _restore(assignment_sources):
  """init_from_checkpoint for each (checkpoint, {name: variable}) pair."""
  for checkpoint, assignment_map in assignment_sources:
    if assignment_map:
      tf.compat.v1.train.init_from_checkpoint(checkpoint, assignment_map)


def _assignment_sources(method, init_checkpoint, task_patch, variables,
                        trained):
  """What to restore from where. Returns (sources, restored names).

  Training: every non-patch variable found in the backbone checkpoint
  (nothing for peterzero/scratch). Task patch: the trained variables from
  the patch, every other variable from its backbone checkpoint.
  """
  trained_names = {checkpoint_lib.variable_name(v) for v in trained}
  sources = []
  restored = set()
  if task_patch is not None:
    patch_checkpoint, backbone_checkpoint = task_patch
    patch_map, patch_names = checkpoint_lib.assignment_map_from_checkpoint(
        trained, patch_checkpoint)
    missing = sorted(trained_names - patch_names)
    if missing:
      raise CompatibilityError(
          "task patch %s lacks trained variables %s" % (patch_checkpoint,
                                                        missing))
    sources.append((patch_checkpoint, patch_map))
    restored |= patch_names
    frozen = [v for v in variables
              if checkpoint_lib.variable_name(v) not in trained_names]
    needed = [checkpoint_lib.variable_name(v) for v in frozen
              if checkpoint_lib.variable_name(v) not in UNUSED_VARIABLES]
    if needed and backbone_checkpoint is None:
      raise CompatibilityError("the task patch needs a backbone checkpoint "
                               "for %s" % needed)
    if frozen and backbone_checkpoint is not None:
      frozen_map, frozen_names = checkpoint_lib.assignment_map_from_checkpoint(
          frozen, backbone_checkpoint)
      missing = sorted(set(needed) - frozen_names)
      if missing:
        raise CompatibilityError(
            "backbone checkpoint %s lacks variables the task patch needs: %s"
            % (backbone_checkpoint, missing))
      sources.append((backbone_checkpoint, frozen_map))
      restored |= frozen_names
    return sources, restored
  if restores_backbone(method):
    assignment_map, names = checkpoint_lib.assignment_map_from_checkpoint(
        variables, init_checkpoint, exclude=is_patch_variable)
    sources.append((init_checkpoint, assignment_map))
    restored |= names
  return sources, restored


def _log_variables(variables, trained, restored):
  trained_names = {checkpoint_lib.variable_name(v) for v in trained}
  logging.info("%d variables: %d trained, %d restored (--verbosity=1 lists "
               "them)", len(variables), len(trained), len(restored))
  for variable in variables:
    name = checkpoint_lib.variable_name(variable)
    marks = []
    if name in restored:
      marks.append("*INIT_FROM_CKPT*")
    marks.append("TRAINED" if name in trained_names else "frozen")
    logging.debug("  name = %s, shape = %s, %s", name, variable.shape,
                  ", ".join(marks))


def model_fn_builder(model_config, init_checkpoint, method, insertion,
                     cardinality, task, target_vocab_size, loss="bce",
                     learning_rate=0.001, beta1=0.9, eval_protocol="sampled",
                     top_k=5, predict_top_k=10, task_patch=None,
                     cls_at_start=False, user_vector="cls"):
  """Returns the Estimator `model_fn` of PeterRec fine-tuning.

  Args:
    model_config: modeling.ModelConfig of the backbone.
    init_checkpoint: pretrained backbone checkpoint prefix (unused by
      peterzero/scratch; may then be None).
    method: one of METHODS.
    insertion: "serial" or "parallel" (patch methods).
    cardinality: branches of each patch.
    task: "recommendation" or "classification".
    target_vocab_size: target (or class) vocabulary size, with id 0.
    loss: "bce" (one negative, the original), "bpr" (LambdaFM script) or
      "softmax" (cross-entropy over all targets/classes).
    learning_rate, beta1: Adam.
    eval_protocol: "sampled" (features["negatives"] holds the sampled
      candidates; the positive is appended last) or "full" (all targets).
      Classification always reports accuracy over all classes.
    top_k: cut-off of MRR/HR/NDCG.
    predict_top_k: number of target ids returned by PREDICT.
    task_patch: None, or (patch checkpoint prefix, backbone checkpoint
      prefix or None): restore the trained variables from the patch and
      the others from the backbone (evaluation/prediction of an exported
      task).
    cls_at_start: causal only: rows `[0, source..., target]` and the user
      vector at position 0 (the paper's `[CLS]`-at-start ablation).
    user_vector: "cls" (the `[CLS]` state, the original) or "mean" (the
      mean of every position's state).

  Features (from data_loader.finetune_input_fn_builder):
    rows int32 [B, L], target int32 [B], negatives int32 [B, N].

  Returns:
    model_fn(features, labels, mode, params) -> tf.estimator.EstimatorSpec.
  """
  _check_method(method)
  if task not in TASKS:
    raise ValueError("task must be one of %s, got %r" % (TASKS, task))
  if loss not in LOSSES:
    raise ValueError("loss must be one of %s, got %r" % (LOSSES, loss))
  if eval_protocol not in EVAL_PROTOCOLS:
    raise ValueError("eval_protocol must be one of %s, got %r" %
                     (EVAL_PROTOCOLS, eval_protocol))
  if uses_patches(method) and insertion not in INSERTIONS:
    raise ValueError("insertion must be one of %s, got %r" %
                     (INSERTIONS, insertion))
  if restores_backbone(method) and task_patch is None and not init_checkpoint:
    raise ValueError("method %s restores a pretrained backbone: give "
                     "init_checkpoint" % method)
  num_blocks = len(model_config.dilations)

  def model_fn(features, labels, mode, params):
    del labels, params  # Everything is in `features` and the closure.
    # Ids outside the tables are a data error, not a silent zero embedding.
    # The last column of a row is the target id (target vocabulary); the rest
    # are item ids, the network's input.
    context = data_loader.check_id_range(
        features["rows"][:, :-1], model_config.item_size,
        "item id in features[rows]")
    target = data_loader.check_id_range(features["target"], target_vocab_size,
                                        "target id in features[target]")
    negatives = features["negatives"]
    user, table = build_finetune_model(context, model_config, method,
                                       insertion, cardinality,
                                       target_vocab_size, cls_at_start,
                                       user_vector)
    variables = tf.compat.v1.trainable_variables()
    trained = trainable_variables_for(method, variables, num_blocks)
    sources, restored = _assignment_sources(method, init_checkpoint,
                                            task_patch, variables, trained)
    _restore(sources)
    if mode == tf.estimator.ModeKeys.TRAIN or task_patch is not None:
      _log_variables(variables, trained, restored)

    if mode == tf.estimator.ModeKeys.PREDICT:
      scores = _mask_unk(heads.all_target_scores(user, table))
      k = min(predict_top_k, target_vocab_size - 1)
      top_scores, top_ids = tf.nn.top_k(scores, k=k)
      predictions = {"target": target, "top_ids": top_ids,
                     "top_scores": top_scores, "user_vector": user}
      return tf.estimator.EstimatorSpec(
          mode, predictions=predictions,
          export_outputs={"predict": tf.estimator.export.PredictOutput(
              predictions)})

    total_loss = _loss(loss, user, table, target, negatives)
    total_loss = tf.identity(total_loss + heads.regularization_loss(),
                             name="total_loss")

    if mode == tf.estimator.ModeKeys.TRAIN:
      optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate, beta1=beta1)
      # Only the method's variables: the frozen ones stay bit-identical.
      train_op = training_utils.minimize_and_count_step(
          optimizer, total_loss, var_list=trained)
      return tf.estimator.EstimatorSpec(mode, loss=total_loss,
                                        train_op=train_op)

    # EVAL
    if task == "classification":
      logits = _mask_unk(heads.all_target_scores(user, table))
      per_example = {"accuracy": metrics_lib.accuracy(logits, target)}
    elif eval_protocol == "sampled":
      candidates = tf.concat([negatives, tf.expand_dims(target, 1)], axis=1)
      scores = heads.candidate_scores(user, table, candidates)
      rank = metrics_lib.rank_of_positive(scores, tf.shape(negatives)[1])
      per_example = metrics_lib.per_example_ranking_metrics(rank, top_k)
    else:
      scores = _mask_unk(heads.all_target_scores(user, table))
      rank = metrics_lib.rank_of_positive(scores, target)
      per_example = metrics_lib.per_example_ranking_metrics(rank, top_k)
    metric_ops = metrics_lib.mean_metric_ops(per_example)
    ones = tf.ones_like(target, dtype=tf.bool)
    metric_ops["num_examples"] = tf.compat.v1.metrics.true_positives(
        labels=ones, predictions=ones)
    return tf.estimator.EstimatorSpec(mode, loss=total_loss,
                                      eval_metric_ops=metric_ops)

  return model_fn


# ---------------------------------------------------------------------------
# Configuration, compatibility checks, parameter accounting
# ---------------------------------------------------------------------------


def backbone_from_checkpoint(checkpoint):
  """What a checkpoint says about its backbone, from variable shapes only.

  Returns:
    dict with item_size, channels, dilations, kernel_size,
    has_positional_embedding, max_position (None when absent).

  Raises:
    CompatibilityError: no `allitem_embeddings` or no residual block.
  """
  shapes = checkpoint_lib.model_variable_shapes(checkpoint)
  if "allitem_embeddings" not in shapes:
    raise CompatibilityError("checkpoint %s has no allitem_embeddings: not a "
                             "NextItNet/GRec checkpoint" % checkpoint)
  blocks_found = {}
  kernel_size = None
  for name, shape in shapes.items():
    match = _BLOCK_RE.match(name)
    if match:
      blocks_found[int(match.group(1))] = int(match.group(2))
      if name.endswith("/dilated_conv1/weight"):
        kernel_size = shape[1]
  if not blocks_found:
    raise CompatibilityError("checkpoint %s has no residual block (%s...)" %
                             (checkpoint, blocks.block_scope_name(0, 1)))
  item_size, channels = shapes["allitem_embeddings"]
  position = shapes.get("dec_pos/lookup_table_position")
  return {
      "item_size": item_size,
      "channels": channels,
      "dilations": [blocks_found[i] for i in sorted(blocks_found)],
      "kernel_size": kernel_size,
      "has_positional_embedding": position is not None,
      "max_position": position[0] if position is not None else None,
  }


def resolve_model_config(init_checkpoint=None, model_config_file=None,
                         backbone=None, item_vocab_size=None, overrides=None):
  """The backbone configuration, from the saved config or the checkpoint.

  Order: `model_config_file`; else `model_config.json` beside the
  checkpoint (the pretraining script writes it into its model_dir); else
  the checkpoint's shapes (the authors' checkpoints have no config; then
  `backbone` must say nextitnet or grec); else defaults (peterzero /
  scratch without a checkpoint). `overrides` (non-None values win) and
  `backbone` are applied last; the item size defaults to the data's.

  Returns:
    (ModelConfig, source description str).
  """
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  values = None
  source = None
  candidates = []
  if model_config_file:
    candidates.append(model_config_file)
  elif init_checkpoint:
    directory = (init_checkpoint if tf.io.gfile.isdir(init_checkpoint) else
                 os.path.dirname(init_checkpoint))
    candidates.append(os.path.join(directory, modeling.CONFIG_FILENAME))
  for path in candidates:
    if tf.io.gfile.exists(path):
      values = modeling.ModelConfig.from_json_file(path).to_dict()
      source = path
    elif model_config_file:
      raise CompatibilityError("model config file %s does not exist" % path)
  if values is None and init_checkpoint:
    inferred = backbone_from_checkpoint(init_checkpoint)
    values = {k: v for k, v in inferred.items() if v is not None}
    source = "shapes of checkpoint %s" % init_checkpoint
    if backbone is None:
      raise CompatibilityError(
          "%s has no %s: say whether it is a causal NextItNet or a "
          "non-causal GRec encoder with --backbone=nextitnet|grec" %
          (os.path.dirname(init_checkpoint) or ".", modeling.CONFIG_FILENAME))
  if values is None:
    values = {}
    source = "flags and defaults"
  if backbone is not None:
    causal = BACKBONES[backbone]
    if source and source.endswith(".json") and values.get("causal",
                                                          causal) != causal:
      raise CompatibilityError(
          "--backbone=%s, but %s says causal=%s" %
          (backbone, source, values.get("causal")))
    values["causal"] = causal
  values.update(overrides)
  if "item_size" not in values:
    if item_vocab_size is None:
      raise CompatibilityError("the item vocabulary size is unknown")
    values["item_size"] = item_vocab_size
  return modeling.ModelConfig.from_dict(values), source


def check_compatibility(init_checkpoint, config, metadata):
  """Fails before any training when checkpoint, config and data disagree.

  Compares the data's item vocabulary with the configuration, then the
  checkpoint's item vocabulary, channels, dilations, kernel size and
  positional embedding with the configuration and the data; when the
  checkpoint's directory holds the pretraining `item_vocab.txt` (the
  pretraining script copies it there), its contents must be the data's
  item vocabulary, not just its size; finally every backbone variable
  shape (`ops.checkpoint.check_shapes_match`).

  Args:
    init_checkpoint: checkpoint prefix/dir, or None (nothing to compare).
    config: ModelConfig.
    metadata: data_loader.load_metadata of the fine-tuning data.

  Raises:
    CompatibilityError naming each differing size, e.g.
    "item vocabulary: checkpoint 175, data 180".
  """
  problems = []
  data_items = metadata["item_vocab_size"]
  if config.item_size != data_items:
    problems.append("item vocabulary: configuration %d, data %d" %
                    (config.item_size, data_items))
  if init_checkpoint:
    stored = backbone_from_checkpoint(init_checkpoint)
    if stored["item_size"] != data_items:
      problems.append("item vocabulary: checkpoint %d, data %d" %
                      (stored["item_size"], data_items))
    for key, label in (("channels", "channels"), ("dilations", "dilations"),
                       ("kernel_size", "kernel size"),
                       ("has_positional_embedding", "positional embedding")):
      if stored[key] != getattr(config, key):
        problems.append("%s: checkpoint %s, configuration %s" %
                        (label, stored[key], getattr(config, key)))
    vocab_path = os.path.join(
        os.path.dirname(checkpoint_lib.resolve_checkpoint(init_checkpoint)),
        data_loader.ITEM_VOCAB_FILE)
    data_sha1 = metadata.get("item_vocab_sha1")
    if (not problems and data_sha1 and tf.io.gfile.exists(vocab_path) and
        data_loader.Vocabulary.load(vocab_path).sha1() != data_sha1):
      problems.append(
          "item vocabulary: the checkpoint's %s and the data's "
          "item_vocab.txt both have %d ids but map items to different ids"
          % (vocab_path, data_items))
  if problems:
    hint = ""
    if any(p.startswith("item vocabulary") for p in problems):
      hint = ("\n(convert the fine-tuning CSV with --item_vocab=<the "
              "pretraining item_vocab.txt> so that its ids are the "
              "checkpoint's)")
    raise CompatibilityError(
        "The pretrained checkpoint %s, the model configuration and the "
        "fine-tuning data %s disagree:\n  %s%s" %
        (init_checkpoint, metadata.get("data_dir", ""),
         "\n  ".join(problems), hint))
  if init_checkpoint:
    try:
      checkpoint_lib.check_shapes_match(
          init_checkpoint, modeling.backbone_variable_shapes(config))
    except ValueError as e:
      raise CompatibilityError(str(e))


def resolve_task(task_flag, metadata, patch_description=None,
                 output_dir=None):
  """The task of a run: every source that states one must agree.

  Sources: the flag, the dataset's metadata (recorded at conversion), the
  task patch's description, and the parameters.json of a checkpoint in
  `output_dir` that this run would continue from.

  Returns:
    "recommendation" or "classification"; recommendation, with a warning,
    when nothing states one (a dataset converted before tasks were kept).

  Raises:
    CompatibilityError naming the two sources that disagree.
  """
  stated = []
  if task_flag:
    stated.append(("--task", task_flag))
  if metadata.get("task"):
    stated.append(("the dataset %s (metadata.json)" % metadata["data_dir"],
                   metadata["task"]))
  if patch_description is not None and patch_description.get("task"):
    stated.append(("the task patch", patch_description["task"]))
  previous = os.path.join(output_dir or "", PARAMETERS_FILE)
  if (output_dir and tf.train.latest_checkpoint(output_dir) and
      tf.io.gfile.exists(previous)):
    task = json.loads(data_loader.read_text(previous)).get("task")
    if task:
      stated.append(("the checkpoint in --output_dir %s (%s)" %
                     (output_dir, PARAMETERS_FILE), task))
  for (source, task), (other, other_task) in zip(stated, stated[1:]):
    if task != other_task:
      raise CompatibilityError(
          "task: %s says %s, but %s says %s" %
          (source, task, other, other_task))
  if stated:
    return stated[0][1]
  logging.warning("%s was converted before tasks were recorded: taking it "
                  "as recommendation (pass --task=classification for class "
                  "labels)", metadata["data_dir"])
  return "recommendation"


def check_resumable(output_dir, config, metadata):
  """Refuses an --output_dir whose checkpoint belongs to other data/config.

  Rerunning a command resumes from the latest checkpoint in `output_dir`;
  when that checkpoint was trained with another item or target vocabulary
  or another backbone width, restoring would fail half-way (or, worse, a
  same-shaped table would silently mean other ids). Checked before any
  graph is built.

  Raises:
    CompatibilityError naming the checkpoint and both sizes.
  """
  latest = tf.train.latest_checkpoint(output_dir)
  if latest is None:
    return
  stored = checkpoint_lib.model_variable_shapes(latest)
  wanted = {
      "allitem_embeddings": [config.item_size, config.channels],
      heads.TARGET_SCOPE + "/allitem_embeddings_target": [
          metadata["target_vocab_size"], config.hidden_size],
  }
  problems = ["%s: checkpoint %s, data/configuration %s" %
              (name, stored[name], shape) for name, shape in wanted.items()
              if name in stored and list(stored[name]) != shape]
  if problems:
    raise CompatibilityError(
        "--output_dir %s holds checkpoint %s of another dataset or "
        "configuration, which this run would resume from:\n  %s\nUse "
        "another --output_dir." % (output_dir, latest, "\n  ".join(problems)))
  logging.info("%s exists: continuing from it", latest)


def parameter_report(config, method, insertion, cardinality,
                     target_vocab_size):
  """Parameter accounting of a method, from a graph built on the side.

  Returns:
    dict: trainable_parameters, total_parameters (every variable the
    fine-tuned model uses: backbone, patches, head; the unused softmax_w
    of the non-causal graph is reported apart), trainable_percent,
    task_artifact_bytes (float32 bytes of what the task trains and must
    store), full_model_bytes, per-group counts and trained variable names.
  """
  with tf.Graph().as_default():
    # Never run; a seed only because --deterministic refuses unseeded ops.
    tf.compat.v1.set_random_seed(0)
    context = tf.compat.v1.placeholder(tf.int32, [None, 4])
    build_finetune_model(context, config, method, insertion, cardinality,
                         target_vocab_size)
    variables = tf.compat.v1.trainable_variables()
    trained = trainable_variables_for(method, variables, len(config.dilations))
    used = [v for v in variables
            if checkpoint_lib.variable_name(v) not in UNUSED_VARIABLES]
    unused = [v for v in variables
              if checkpoint_lib.variable_name(v) in UNUSED_VARIABLES]
    groups = collections.OrderedDict()
    for variable in used:
      name = checkpoint_lib.variable_name(variable)
      if is_head_variable(name):
        group = "head"
      elif is_patch_variable(name):
        group = "patches"
      else:
        group = "backbone"
      groups[group] = groups.get(group, 0) + count_parameters([variable])
    trainable = count_parameters(trained)
    total = count_parameters(used)
    return {
        "method": method,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100.0 * trainable / total,
        "parameters_by_group": dict(groups),
        "unused_parameters": count_parameters(unused),
        "task_artifact_bytes": FLOAT_BYTES * trainable,
        "full_model_bytes": FLOAT_BYTES * total,
        "trained_variables": [checkpoint_lib.variable_name(v)
                              for v in trained],
    }


def format_parameter_report(report):
  return ("Parameters of %s: trainable %d of %d (%.2f%%); per-task artefact "
          "%d bytes (float32) vs full model %d bytes; by group %s%s" %
          (report["method"], report["trainable_parameters"],
           report["total_parameters"], report["trainable_percent"],
           report["task_artifact_bytes"], report["full_model_bytes"],
           report["parameters_by_group"],
           ("; unused softmax_w %d" % report["unused_parameters"]
            if report["unused_parameters"] else "")))


# ---------------------------------------------------------------------------
# Task patch export and loading
# ---------------------------------------------------------------------------


def checkpoint_bytes(checkpoint):
  """On-disk size of a checkpoint prefix (index + data shards)."""
  prefix = checkpoint_lib.resolve_checkpoint(checkpoint)
  return sum(tf.io.gfile.stat(path).length
             for path in tf.io.gfile.glob(prefix + ".*"))


def variables_fingerprint(checkpoint, names):
  """SHA-1 of the named variables' values in a checkpoint (sorted by name)."""
  reader = tf.train.load_checkpoint(checkpoint_lib.resolve_checkpoint(
      checkpoint))
  digest = hashlib.sha1()
  for name in sorted(names):
    value = np.ascontiguousarray(reader.get_tensor(name))
    digest.update(name.encode("utf-8"))
    digest.update(str(value.dtype).encode("utf-8"))
    digest.update(str(value.shape).encode("utf-8"))
    digest.update(value.tobytes())
  return digest.hexdigest()


def _write_checkpoint(values, prefix):
  """Writes {name: numpy value} as a checkpoint at `prefix` (no global_step)."""
  with tf.Graph().as_default():
    var_list = {}
    feed = {}
    for index, (name, value) in enumerate(sorted(values.items())):
      # Fed through a placeholder: large tables never become graph constants.
      initial = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
      var_list[name] = tf.compat.v1.Variable(initial, name="v%d" % index)
      feed[initial] = value
    saver = tf.compat.v1.train.Saver(var_list=var_list,
                                     save_relative_paths=True)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer(), feed)
      return saver.save(session, prefix, write_meta_graph=False)


def export_task_patch(finetuned_checkpoint, output_dir, config, method,
                      insertion, cardinality, task, target_vocab_size,
                      init_checkpoint, extra=None):
  """Writes only what the task trained, and where the rest comes from.

  `output_dir/task_patch/task_patch.ckpt.*` holds the trained variables
  (patches, layer_norm2 and head for PeterRec) read from the fine-tuned
  checkpoint; `task_patch.json` records the method, sizes, the model
  configuration and the backbone checkpoint (with a fingerprint of the
  frozen variables) the patch belongs to. For peterzero the frozen random
  backbone is not in any pretrained checkpoint, so it is written once to
  `output_dir/frozen_backbone/`.

  Returns:
    dict: the contents of task_patch.json.
  """
  report = parameter_report(config, method, insertion, cardinality,
                            target_vocab_size)
  finetuned_checkpoint = checkpoint_lib.resolve_checkpoint(
      finetuned_checkpoint)
  reader = tf.train.load_checkpoint(finetuned_checkpoint)
  stored = reader.get_variable_to_shape_map()
  trained_names = report["trained_variables"]
  patch_dir = os.path.join(output_dir, TASK_PATCH_DIR)
  # Written in a temporary directory and renamed into place at the end: a
  # run killed during the export never leaves a half-written task_patch/.
  staging_dir = training_utils.staging_dir(patch_dir)
  patch_prefix = _write_checkpoint(
      {name: reader.get_tensor(name) for name in trained_names},
      os.path.join(staging_dir, TASK_PATCH_PREFIX))

  # Frozen variables the patch needs from a backbone checkpoint.
  frozen_names = sorted(
      name for name in stored
      if name not in trained_names and not checkpoint_lib.is_optimizer_variable(
          name) and name != "global_step")
  backbone_checkpoint = None
  if frozen_names:
    if restores_backbone(method):
      backbone_checkpoint = data_loader.absolute_path(
          checkpoint_lib.resolve_checkpoint(init_checkpoint))
      base = checkpoint_lib.model_variable_shapes(backbone_checkpoint)
      frozen_names = [n for n in frozen_names if n in base]
    else:
      backbone_dir = os.path.join(output_dir, FROZEN_BACKBONE_DIR)
      staging = training_utils.staging_dir(backbone_dir)
      _write_checkpoint(
          {name: reader.get_tensor(name) for name in frozen_names},
          os.path.join(staging, FROZEN_BACKBONE_PREFIX))
      training_utils.replace_dir(staging, backbone_dir)
      backbone_checkpoint = data_loader.absolute_path(
          os.path.join(backbone_dir, FROZEN_BACKBONE_PREFIX))
  description = {
      "method": method,
      "insertion": insertion if uses_patches(method) else None,
      "cardinality": cardinality if uses_patches(method) else None,
      "task": task,
      "target_vocab_size": target_vocab_size,
      "model_config": config.to_dict(),
      "trained_variables": trained_names,
      "trainable_parameters": report["trainable_parameters"],
      "total_parameters": report["total_parameters"],
      "backbone_checkpoint": backbone_checkpoint,
      "backbone_variables": frozen_names if backbone_checkpoint else [],
      "backbone_fingerprint": (variables_fingerprint(backbone_checkpoint,
                                                     frozen_names)
                               if backbone_checkpoint else None),
      "finetuned_checkpoint": data_loader.absolute_path(finetuned_checkpoint),
      "task_patch_bytes": checkpoint_bytes(patch_prefix),
      "finetuned_checkpoint_bytes": checkpoint_bytes(finetuned_checkpoint),
      "backbone_checkpoint_bytes": (checkpoint_bytes(backbone_checkpoint)
                                    if backbone_checkpoint else 0),
  }
  description.update(extra or {})
  training_utils.write_json_atomic(os.path.join(staging_dir, TASK_PATCH_JSON),
                                   description)
  training_utils.replace_dir(staging_dir, patch_dir)
  return description


def load_task_patch(patch_dir, backbone_checkpoint=None):
  """Reads task_patch.json and checks the backbone it is served with.

  Args:
    patch_dir: the `task_patch/` directory.
    backbone_checkpoint: the backbone to serve with (None: the one recorded).

  Returns:
    (description dict, patch checkpoint prefix, backbone checkpoint prefix).

  Raises:
    CompatibilityError when the backbone's frozen variables differ from
    those the patch was trained with.
  """
  path = os.path.join(patch_dir, TASK_PATCH_JSON)
  if not tf.io.gfile.exists(path):
    raise CompatibilityError("%s is not a task patch (no %s)" %
                             (patch_dir, TASK_PATCH_JSON))
  with tf.io.gfile.GFile(path) as f:
    description = json.load(f)
  patch_prefix = os.path.join(patch_dir, TASK_PATCH_PREFIX)
  checkpoint_lib.resolve_checkpoint(patch_prefix)
  recorded = description["backbone_checkpoint"]
  if backbone_checkpoint is None or not description["backbone_variables"]:
    backbone_checkpoint = recorded
  if backbone_checkpoint is not None and description["backbone_variables"]:
    backbone_checkpoint = checkpoint_lib.resolve_checkpoint(
        backbone_checkpoint)
    stored = checkpoint_lib.model_variable_shapes(backbone_checkpoint)
    missing = [n for n in description["backbone_variables"]
               if n not in stored]
    if missing:
      raise CompatibilityError(
          "backbone %s lacks %d variables of the task patch (first: %s); the "
          "patch belongs to %s" % (backbone_checkpoint, len(missing),
                                   missing[0], recorded))
    fingerprint = variables_fingerprint(backbone_checkpoint,
                                        description["backbone_variables"])
    if fingerprint != description["backbone_fingerprint"]:
      raise CompatibilityError(
          "backbone %s is not the one the task patch was trained on (%s): "
          "the frozen variables differ" % (backbone_checkpoint, recorded))
  return description, patch_prefix, backbone_checkpoint


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def make_estimator(model_fn, model_dir, save_checkpoints_steps=1000,
                   save_summary_steps=100, keep_checkpoint_max=5,
                   tf_random_seed=None, intra_op_threads=1,
                   inter_op_threads=2, save_graph_def=False):
  """An Estimator with the session config and cadences of PERF_NOTES.md.

  `save_graph_def=False` skips graph.pbtxt and the checkpoints' .meta files
  (the graph is rebuilt from code; writing them costs seconds per run).
  """
  run_config = tf.estimator.RunConfig(
      model_dir=model_dir, tf_random_seed=tf_random_seed,
      checkpoint_save_graph_def=save_graph_def,
      save_checkpoints_steps=save_checkpoints_steps,
      save_summary_steps=save_summary_steps,
      log_step_count_steps=None,  # training_utils.ProgressHook reports
      keep_checkpoint_max=keep_checkpoint_max,
      session_config=training_utils.session_config(intra_op_threads,
                                                   inter_op_threads))
  return tf.estimator.Estimator(model_fn=model_fn, config=run_config,
                                params={})


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


def selection_metric(task, metric, top_k):
  """The validation metric that picks the checkpoint (None = the task's)."""
  if metric:
    return metric
  return "accuracy" if task == "classification" else "hr@%d" % top_k


def plan_training_rows(metadata, options):
  """Which training-split rows train and which validate (see flags).

  Returns:
    dict: train_mask / validation_mask (bool arrays over the training
    split's rows, or None for "all" / "no validation"), num_train,
    num_validation, num_train_users, split_by.
  """
  f = options
  split_by = metadata.get("split_by", "row")
  whole = {"train_mask": None, "validation_mask": None,
           "num_train": metadata["num_train"], "num_validation": 0,
           "split_by": split_by, "validation_fraction": 0.0,
           "labelled_fraction": 1.0, "num_labelled_users": None}
  if (f.validation_fraction == 0 and f.labelled_fraction == 1.0 and
      f.num_labelled_users is None):
    return whole
  users = data_loader.read_finetune_users(metadata["paths"]["train"])
  try:
    train, validation = data_loader.carve_training_rows(
        users, f.validation_fraction, by=split_by,
        labelled_fraction=f.labelled_fraction,
        num_labelled_users=f.num_labelled_users, seed=f.split_seed,
        labelled_seed=f.seed)
  except ValueError as e:
    raise CompatibilityError(str(e))
  plan = dict(whole, train_mask=train,
              validation_mask=validation if validation.any() else None,
              num_train=int(train.sum()), num_validation=int(validation.sum()),
              num_train_users=int(len(np.unique(users[train]))),
              validation_fraction=f.validation_fraction,
              labelled_fraction=f.labelled_fraction,
              num_labelled_users=f.num_labelled_users)
  logging.info("Training rows: %d of %d (%d users); validation rows: %d "
               "(split by %s, seed %d)", plan["num_train"], len(users),
               plan["num_train_users"], plan["num_validation"], split_by,
               f.split_seed)
  return plan


def selected_checkpoint(model_dir):
  """The best validated checkpoint of `model_dir`, else its latest one."""
  selection = read_selection(model_dir)
  if selection and selection.get("best"):
    return os.path.join(model_dir, BEST_DIR, selection["best"]["checkpoint"])
  return tf.train.latest_checkpoint(model_dir)


def read_selection(model_dir):
  """`best/best.json` (validation history and best step), or None."""
  path = os.path.join(model_dir, BEST_DIR, training_utils.BEST_STATE_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as reader:
    return json.load(reader)


def _float_metrics(results):
  return {k: (float(v) if k != "num_examples" else int(v))
          for k, v in results.items() if k != "global_step"}


def check_eval_options(metadata, task, eval_protocol, num_eval_negatives,
                       distinct_negatives):
  """Clear errors for evaluation settings the data cannot support."""
  target_vocab_size = metadata["target_vocab_size"]
  if target_vocab_size < 3:
    raise CompatibilityError(
        "the target vocabulary has %d ids (with <UNK>); at least two real "
        "targets/classes are needed" % target_vocab_size)
  if (task == "recommendation" and eval_protocol == "sampled" and
      distinct_negatives and num_eval_negatives > target_vocab_size - 2):
    raise CompatibilityError(
        "--distinct_negatives needs --num_eval_negatives <= %d (the target "
        "ids other than <UNK> and the positive), got %d" %
        (target_vocab_size - 2, num_eval_negatives))


def run(options):
  """Everything `main` does, from a dict of option values.

  Args:
    options: {flag name: value}, e.g. `dict(default_options(), data_dir=...,
      output_dir=..., init_checkpoint=...)`.

  Returns:
    dict with "parameters" (parameter_report), "metrics" (the metrics.json
    contents, when evaluated) and "task_patch" (task_patch.json, when
    exported).
  """
  unknown = sorted(set(options) - set(default_options()))
  if unknown:
    raise ValueError("unknown options %s" % unknown)
  f = collections.namedtuple("Options", sorted(options))(**options)
  # Fail fast, before reading data or building graphs.
  training_utils.check_positive({name: getattr(f, name) for name in (
      "num_train_steps", "num_train_epochs", "train_batch_size",
      "eval_batch_size", "eval_every_steps", "num_labelled_users")})
  training_utils.set_process_threads(f.intra_op_threads, f.inter_op_threads)
  cluster_task = training_utils.tf_config_task()
  if cluster_task is not None and f.do_train:
    # Estimator.train under TF_CONFIG would wait for a cluster that nothing
    # here starts; only nextitnet_pretrain.py runs train_and_evaluate.
    raise CompatibilityError(
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
  metadata = data_loader.load_metadata(f.data_dir)
  if metadata["kind"] != data_loader.FINETUNE:
    raise CompatibilityError("%s holds a %s dataset, not a fine-tuning one" %
                             (f.data_dir, metadata["kind"]))
  tf.io.gfile.makedirs(f.output_dir)

  task_patch = None
  patch_description = None
  method = f.method
  insertion, cardinality = f.insertion, f.cardinality
  init_checkpoint = f.init_checkpoint
  if f.task_patch:
    if f.do_train:
      raise ValueError("--task_patch evaluates/predicts an exported task: "
                       "pass --do_train=false")
    patch_description, patch_prefix, backbone = load_task_patch(
        f.task_patch, init_checkpoint)
    method = patch_description["method"]
    insertion = patch_description["insertion"]
    cardinality = patch_description["cardinality"] or 1
    config = modeling.ModelConfig.from_dict(patch_description["model_config"])
    if f.conv_implementation:
      config = config.replace(conv_implementation=f.conv_implementation)
    if patch_description["target_vocab_size"] != metadata["target_vocab_size"]:
      raise CompatibilityError(
          "target vocabulary: task patch %d, data %d" %
          (patch_description["target_vocab_size"],
           metadata["target_vocab_size"]))
    if config.item_size != metadata["item_vocab_size"]:
      raise CompatibilityError("item vocabulary: task patch %d, data %d" %
                               (config.item_size, metadata["item_vocab_size"]))
    task_patch = (patch_prefix, backbone)
    init_checkpoint = backbone
    config_source = os.path.join(f.task_patch, TASK_PATCH_JSON)
  else:
    if restores_backbone(method) and not init_checkpoint:
      raise ValueError("--method=%s fine-tunes a pretrained backbone: give "
                       "--init_checkpoint" % method)
    if init_checkpoint:
      init_checkpoint = checkpoint_lib.resolve_checkpoint(init_checkpoint)
    overrides = {"channels": f.channels, "kernel_size": f.kernel_size,
                 "conv_implementation": f.conv_implementation,
                 "dilations": ([int(d) for d in f.dilations]
                               if f.dilations else None)}
    config, config_source = resolve_model_config(
        init_checkpoint, f.model_config_file, f.backbone,
        metadata["item_vocab_size"], overrides)
    if insertion is None:
      insertion = "serial" if config.causal else "parallel"
    check_compatibility(init_checkpoint, config, metadata)
    if not restores_backbone(method):
      init_checkpoint = None  # random initialization: nothing restored
  logging.info("Backbone configuration (from %s): %s", config_source,
               json.dumps(config.to_dict(), sort_keys=True))
  cls_position = f.cls_position
  if patch_description is not None:
    cls_position = patch_description.get("cls_position") or "end"
  if cls_position == "start" and not config.causal:
    raise CompatibilityError("--cls_position=start is the ablation of the "
                             "causal backbone; the non-causal one reads "
                             "[CLS] at both ends")
  cls_at_start = cls_position == "start"
  user_vector = f.user_vector
  if patch_description is not None:
    user_vector = patch_description.get("user_vector") or "cls"
  if cls_at_start and user_vector != "cls":
    raise CompatibilityError("--cls_position=start reads the [CLS] state; "
                             "--user_vector=%s does not" % user_vector)
  if (cls_at_start or user_vector != "cls") and f.export_dir:
    raise CompatibilityError("--export_dir serves the original [CLS]-at-end "
                             "user vector only")
  task = resolve_task(f.task, metadata, patch_description,
                      f.output_dir if task_patch is None else None)
  check_eval_options(metadata, task, f.eval, f.num_eval_negatives,
                     f.distinct_negatives)
  if f.loss == "softmax" and f.sampler == "lambdafm":
    raise ValueError("--sampler=lambdafm draws negatives for bce/bpr; the "
                     "softmax loss uses every target")

  if task_patch is None:
    check_resumable(f.output_dir, config, metadata)
  report = parameter_report(config, method, insertion, cardinality,
                            metadata["target_vocab_size"])
  print(format_parameter_report(report))
  training_utils.write_json_atomic(
      os.path.join(f.output_dir, PARAMETERS_FILE if task_patch is None else
                   PATCH_PARAMETERS_FILE),
      dict(report, task=task,
           insertion=insertion if uses_patches(method) else None,
           cardinality=cardinality if uses_patches(method) else None,
           model_config=config.to_dict(), config_source=config_source))

  model_fn = model_fn_builder(
      config, init_checkpoint, method, insertion, cardinality, task,
      metadata["target_vocab_size"], loss=f.loss,
      learning_rate=f.learning_rate, beta1=f.beta1, eval_protocol=f.eval,
      top_k=f.top_k, predict_top_k=f.predict_top_k, task_patch=task_patch,
      cls_at_start=cls_at_start, user_vector=user_vector)
  model_dir = f.output_dir
  if task_patch is not None:
    # A fresh directory without checkpoints: the Estimator then initializes
    # from backbone + patch instead of restoring a fine-tuned checkpoint.
    model_dir = os.path.join(f.output_dir, "task_patch_eval")
    if tf.train.latest_checkpoint(model_dir):
      raise ValueError("%s holds a checkpoint; remove it" % model_dir)
  tf_random_seed = f.tf_random_seed
  if tf_random_seed is None and patch_description is not None:
    tf_random_seed = patch_description.get("tf_random_seed")
  estimator = make_estimator(
      model_fn, model_dir, save_checkpoints_steps=f.save_checkpoints_steps,
      save_summary_steps=f.save_summary_steps,
      keep_checkpoint_max=f.keep_checkpoint_max,
      tf_random_seed=tf_random_seed, intra_op_threads=f.intra_op_threads,
      inter_op_threads=f.inter_op_threads, save_graph_def=f.save_graph_def)

  outputs = {"parameters": report}
  data_files = [metadata["paths"]["train"], metadata["paths"]["test"]]
  if f.do_train:
    if metadata["num_train"] == 0:
      raise CompatibilityError("the training split of %s is empty" %
                               f.data_dir)
    plan = plan_training_rows(metadata, f)
    num_steps = f.num_train_steps
    if num_steps is None:
      num_steps = max(1, int(f.num_train_epochs * plan["num_train"] /
                             f.train_batch_size))
    train_input_fn = data_loader.finetune_input_fn_builder(
        metadata["paths"]["train"], metadata["source_length"], config.causal,
        f.train_batch_size, is_training=True,
        target_vocab_size=metadata["target_vocab_size"], num_negatives=1,
        sampler=f.sampler,
        target_frequencies=metadata.get("train_target_frequencies",
                                        metadata["target_frequencies"]),
        rho=f.rho, seed=f.seed, row_mask=plan["train_mask"],
        cls_at_start=cls_at_start)
    hooks = [training_utils.ProgressHook(
        "total_loss:0", f.train_batch_size, f.log_step_count_steps,
        num_steps, model_dir)]
    if plan["validation_mask"] is not None:
      hooks.append(training_utils.BestCheckpointHook(
          estimator, eval_input_fn(
              metadata, config, task, f.eval, f.num_eval_negatives,
              f.distinct_negatives, f.eval_seed, f.eval_batch_size,
              split="train", row_mask=plan["validation_mask"],
              cls_at_start=cls_at_start),
          every_n_steps=f.eval_every_steps or max(1, num_steps // 10),
          metric=selection_metric(task, f.selection_metric, f.top_k),
          best_dir=os.path.join(f.output_dir, BEST_DIR),
          patience=f.early_stopping_patience, log=print))
    logging.info("Training %s for %d steps of batch %d (%d training "
                 "examples)", method, num_steps, f.train_batch_size,
                 plan["num_train"])
    with training_utils.data_loss_guard(data_files):
      estimator.train(train_input_fn, max_steps=num_steps, hooks=hooks)
    outputs["plan"] = {k: v for k, v in plan.items() if "mask" not in k}
  checkpoint = (selected_checkpoint(model_dir) if task_patch is None
                else None)

  eval_fn = eval_input_fn(metadata, config, task, f.eval,
                          f.num_eval_negatives, f.distinct_negatives,
                          f.eval_seed, f.eval_batch_size,
                          cls_at_start=cls_at_start)
  if f.do_eval:
    if metadata["num_test"] == 0:
      logging.warning("the test split is empty: nothing to evaluate")
    else:
      with training_utils.data_loss_guard(data_files):
        results = estimator.evaluate(
            eval_fn, name="test", checkpoint_path=checkpoint,
            hooks=[training_utils.EvaluationProgressHook(
                "evaluating the test split", metadata["num_test"],
                f.eval_batch_size)])
      metrics = _float_metrics(results)
      protocol = ("accuracy over all classes" if task == "classification"
                  else f.eval)
      reference = baselines.test_reference(
          metadata, task == "classification", f.eval, f.num_eval_negatives,
          f.eval_seed, f.eval_batch_size, f.distinct_negatives, f.top_k)
      summary = {
          "method": method, "task": task, "eval": protocol,
          "insertion": insertion if uses_patches(method) else None,
          "num_eval_negatives": (f.num_eval_negatives
                                 if protocol == "sampled" else None),
          "distinct_negatives": bool(f.distinct_negatives),
          "eval_seed": f.eval_seed, "global_step": int(results["global_step"]),
          "num_test": metadata["num_test"], "metrics": metrics,
          "user_independent_reference": reference,
          "task_patch": f.task_patch or None,
          "validation": read_selection(model_dir) if task_patch is None
                        else None,
      }
      if "plan" in outputs:
        summary["plan"] = outputs["plan"]
      name = PATCH_METRICS_FILE if task_patch is not None else METRICS_FILE
      training_utils.write_json_atomic(os.path.join(f.output_dir, name),
                                       summary)
      print(training_utils.format_metrics_table(
          metrics, title="Test metrics of %s (%s, %s, %d examples; "
          "reference: the same score for every user, by training "
          "frequency)" % (method, task, protocol, metadata["num_test"]),
          reference=reference))
      outputs["metrics"] = summary

  if f.do_train and f.export_task_patch:
    description = export_task_patch(
        checkpoint, f.output_dir, config, method,
        insertion, cardinality, task, metadata["target_vocab_size"],
        init_checkpoint,
        extra={"tf_random_seed": f.tf_random_seed,
               "eval_seed": f.eval_seed, "cls_position": cls_position,
               "user_vector": user_vector,
               "global_step": int(tf.train.load_checkpoint(
                   checkpoint).get_tensor("global_step"))})
    print("Task patch: %s (%d bytes; fine-tuned checkpoint %d bytes, %.2f%%)"
          % (os.path.join(f.output_dir, TASK_PATCH_DIR),
             description["task_patch_bytes"],
             description["finetuned_checkpoint_bytes"],
             100.0 * description["task_patch_bytes"] /
             description["finetuned_checkpoint_bytes"]))
    outputs["task_patch"] = description

  if f.export_dir:
    # Lazy import: serving builds its graph with this module's functions.
    import serving  # pylint: disable=g-import-not-at-top
    if checkpoint is None:
      raise CompatibilityError("--export_dir exports the fine-tuned "
                               "checkpoint of --output_dir %s; there is none"
                               % f.output_dir)
    serving.export_saved_model(
        f.export_dir, checkpoint, config, method, insertion, cardinality,
        task, metadata["paths"]["item_vocab"],
        metadata["paths"]["target_vocab"], metadata["source_length"],
        top_k=f.predict_top_k)
    print("SavedModel: %s (python -m serving predict --saved_model=%s "
          "--input_csv=... --output=...)" % (f.export_dir, f.export_dir))
    outputs["saved_model"] = f.export_dir

  if f.do_predict and metadata["num_test"]:
    path = os.path.join(f.output_dir, PREDICTIONS_FILE)
    tokens = data_loader.Vocabulary.load(
        metadata["paths"]["target_vocab"]).tokens
    count = 0
    with tf.io.gfile.GFile(path + ".tmp", "w") as writer, \
        training_utils.data_loss_guard(data_files):
      for prediction in estimator.predict(eval_fn, checkpoint_path=checkpoint,
                                          yield_single_examples=True):
        # The format of `python -m serving predict`: target tokens, with
        # their ids in the target vocabulary as top_index.
        writer.write(json.dumps({
            "target": tokens[int(prediction["target"])],
            "top_ids": [tokens[i] for i in prediction["top_ids"]],
            "top_index": prediction["top_ids"].tolist(),
            "top_scores": [round(float(s), 6)
                           for s in prediction["top_scores"]],
        }) + "\n")
        count += 1
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    logging.info("Wrote %d predictions to %s", count, path)
  return outputs


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def define_flags(flag_values=flags.FLAGS):
  """Defines the command-line flags in `flag_values` (read only by `main`)."""
  fv = flag_values
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
      "backbone", None, list(BACKBONES), "nextitnet (causal) or grec "
      "(non-causal); needed when the checkpoint has no model_config.json "
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
  flags.DEFINE_enum(
      "method", "peterrec", list(METHODS), "peterrec; the paper's baselines "
      "fineall, finecls, finelast1, finelast2; peterzero (PeterRec without "
      "pretraining); scratch (everything trained from random values).",
      flag_values=fv)
  flags.DEFINE_enum(
      "insertion", None, list(INSERTIONS), "Patch insertion; default serial "
      "for nextitnet, parallel for grec (as the original scripts).",
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
      "task", None, list(TASKS), "recommendation (cold-start targets) or "
      "classification (class labels). Default: the task the dataset was "
      "converted as (its metadata.json; convert_csv --task); a flag that "
      "contradicts it, the task patch or the checkpoint is an error.",
      flag_values=fv)
  flags.DEFINE_enum(
      "loss", "bce", list(LOSSES), "bce (one sampled negative, the "
      "original), bpr (with --sampler=lambdafm: the LambdaFM script), "
      "softmax (cross-entropy over all targets).", flag_values=fv)
  flags.DEFINE_enum(
      "sampler", "uniform", list(SAMPLERS), "Training negatives: uniform, or "
      "lambdafm (static, by training-split target frequency rank).",
      flag_values=fv)
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
  flags.DEFINE_enum(
      "eval", "sampled", list(EVAL_PROTOCOLS), "Recommendation protocol: "
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
  flags.DEFINE_integer("save_checkpoints_steps", 1000, "Checkpoint cadence.",
                       flag_values=fv)
  flags.DEFINE_integer("save_summary_steps", 100, "Summary cadence.",
                       flag_values=fv)
  flags.DEFINE_integer("log_step_count_steps", 100, "Cadence of the "
                       "progress line (step/total, loss, speed, ETA).",
                       flag_values=fv)
  flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept.",
                       flag_values=fv)
  flags.DEFINE_bool("save_graph_def", False, "Write graph.pbtxt and .meta "
                    "files with the checkpoints.", flag_values=fv)
  flags.DEFINE_integer("intra_op_threads", 1, "intra_op_parallelism_threads.",
                       flag_values=fv)
  flags.DEFINE_integer("inter_op_threads", 2, "inter_op_parallelism_threads.",
                       flag_values=fv)


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
  except (CompatibilityError, data_loader.DatasetError,
          training_utils.RunError) as e:
    sys.exit("error: %s" % e)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir", "output_dir"])
  app.run(main)
