"""What fine-tuning a pretrained backbone means, apart from flags and graphs.

`METHOD_TABLE` says what each method restores, patches and trains (every
other place, the `--method` help included, reads it); the checks that a
checkpoint, a configuration, a task and a dataset belong together; the
parameter report; the task patch (only what a task trained, beside the
backbone it needs) and its export and loading; the plan of training and
validation rows; the selected (best validated) checkpoint. Used by
`peterrec_finetune.py`, `serving.py` and the tables.

The paper's baselines share the PeterRec graph and differ only in what is
restored and trained. PeterZero is "PeterRec without pretraining": the same
patched graph, trainable set and budget, only the initial values of the
frozen backbone differ, which isolates the effect of pretraining; training
everything from random values is `scratch` (docs/DEVIATIONS.md F1, F2).
"""
import collections
import hashlib
import json
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
import training_utils
from ops import blocks
from ops import checkpoint as checkpoint_lib
from ops import finetune as finetune_ops
from ops import heads
from ops import modeling

Method = collections.namedtuple("Method", ["patches", "restores_backbone",
                                           "trains"])
# What a method trains, by group: "head" (the target table), "patches"
# (mp_1/mp_2 of every block), "layer_norm2" (of every block), "block-1" /
# "block-2" (every variable of the last / second-last residual block),
# "everything".
METHOD_TABLE = collections.OrderedDict([
    ("peterrec", Method(True, True, ("head", "patches", "layer_norm2"))),
    ("peterzero", Method(True, False, ("head", "patches", "layer_norm2"))),
    ("scratch", Method(False, False, ("everything",))),
    ("fineall", Method(False, True, ("everything",))),
    ("finecls", Method(False, True, ("head",))),
    ("finelast1", Method(False, True, ("head", "block-1"))),
    ("finelast2", Method(False, True, ("head", "block-1", "block-2"))),
])
METHODS = tuple(METHOD_TABLE)
INSERTIONS = ("serial", "parallel")
CLS_POSITIONS = ("end", "start")  # where the causal network's [CLS] slot sits
TASKS = data_loader.TASKS
LOSSES = finetune_ops.LOSSES
SAMPLERS = ("uniform", "lambdafm")
EVAL_PROTOCOLS = finetune_ops.EVAL_PROTOCOLS
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
FLOAT_BYTES = 4

_BLOCK_RE = re.compile(r"^nextitnet_residual_blockdecoder_layer_(\d+)_(\d+)/")
_PATCH_RE = re.compile(r"(^|/)mp_\d+/")


class CompatibilityError(ValueError):
  """The pretrained checkpoint, the configuration and the data disagree."""

def describe_methods():
  """One line per method (for --help and documentation)."""
  return ["%s: %s, %s, trains %s" % (
      name, "patched" if m.patches else "no patches",
      "restores the backbone" if m.restores_backbone else "random backbone",
      " + ".join(m.trains)) for name, m in METHOD_TABLE.items()]


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

def _method(method):
  if method not in METHOD_TABLE:
    raise ValueError("method must be one of %s, got %r" % (METHODS, method))
  return METHOD_TABLE[method]


def check_model_arguments(method, insertion, task, init_checkpoint,
                          task_patch):
  """ValueError when a fine-tuning model_fn cannot be built from these."""
  if task not in TASKS:
    raise ValueError("task must be one of %s, got %r" % (TASKS, task))
  if uses_patches(method) and insertion not in INSERTIONS:
    raise ValueError("insertion must be one of %s, got %r" %
                     (INSERTIONS, insertion))
  if restores_backbone(method) and task_patch is None and not init_checkpoint:
    raise ValueError("method %s restores a pretrained backbone: give "
                     "init_checkpoint" % method)


def uses_patches(method):
  return _method(method).patches


def restores_backbone(method):
  return _method(method).restores_backbone


def _in_group(name, group, num_blocks):
  if group == "everything":
    return True
  if group == "head":
    return is_head_variable(name)
  if group == "patches":
    return is_patch_variable(name)
  if group == "layer_norm2":
    return "/layer_norm2/" in name
  back = int(group.split("-")[1])  # "block-1": the last block
  return block_index(name) == num_blocks - back


def trainable_variables_for(method, variables, num_blocks):
  """The variables `method` trains (METHOD_TABLE), in the order given.

  The unused `softmax_w` of the non-causal graph is never trained (it gets
  no gradient).

  Args:
    method: one of METHODS.
    variables: list of tf.Variable (the graph's trainable variables).
    num_blocks: number of residual blocks (len(config.dilations)).

  Returns:
    list of tf.Variable.
  """
  groups = _method(method).trains
  return [v for v in variables
          if checkpoint_lib.variable_name(v) not in UNUSED_VARIABLES and any(
              _in_group(checkpoint_lib.variable_name(v), group, num_blocks)
              for group in groups)]


def count_parameters(variables):
  """Total number of scalars in `variables`."""
  return int(sum(np.prod(v.shape.as_list(), dtype=np.int64)
                 for v in variables))

def build_finetune_model(context, config, method, insertion, cardinality,
                         target_vocab_size, cls_at_start=False,
                         user_vector="cls"):
  """`ops.finetune.finetune_network` with the method's patches (if any).

  Returns:
    (user_vectors float32 [B, width], target_table [target_vocab_size, width]).
  """
  return finetune_ops.finetune_network(
      context, config, insertion if uses_patches(method) else None,
      cardinality, target_vocab_size, cls_at_start, user_vector)


# ---------------------------------------------------------------------------
# Restoring: the backbone for training, backbone + patch for a task patch
# ---------------------------------------------------------------------------


def assignment_sources(method, init_checkpoint, task_patch, variables,
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


def restore_and_log(method, init_checkpoint, task_patch, variables, trained,
                    log_each):
  """init_from_checkpoint from every source; logs the counts (and, if
  `log_each`, every variable at debug verbosity)."""
  sources, restored = assignment_sources(method, init_checkpoint, task_patch,
                                         variables, trained)
  for checkpoint, assignment_map in sources:
    if assignment_map:
      tf.compat.v1.train.init_from_checkpoint(checkpoint, assignment_map)
  if log_each:
    logging.info("%d variables: %d trained, %d restored (--verbosity=1 "
                 "lists them)", len(variables), len(trained), len(restored))
    checkpoint_lib.log_variables(
        variables, restored, logging.debug,
        trained_names={checkpoint_lib.variable_name(v) for v in trained})


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
        "configuration, which this run would resume from (%s); use another "
        "--output_dir" % (output_dir, latest, "; ".join(problems)))
  logging.info("%s exists: continuing from it", latest)


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


def write_parameter_report(output_dir, setup, metadata):
  """Prints the parameter report of `setup` and writes it to output_dir."""
  report = parameter_report(setup.config, setup.method, setup.insertion,
                            setup.cardinality, metadata["target_vocab_size"])
  print(format_parameter_report(report))
  patched = uses_patches(setup.method)
  training_utils.write_json_atomic(
      os.path.join(output_dir, PARAMETERS_FILE if setup.task_patch is None
                   else PATCH_PARAMETERS_FILE),
      dict(report, task=setup.task,
           insertion=setup.insertion if patched else None,
           cardinality=setup.cardinality if patched else None,
           model_config=setup.config.to_dict(),
           config_source=setup.config_source))
  return report


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
# Task patches
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
# Training rows and the selected checkpoint
# ---------------------------------------------------------------------------


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


def plan_training(metadata, options):
  """(the plan of training rows, the number of training steps)."""
  if metadata["num_train"] == 0:
    raise CompatibilityError("the training split of %s is empty" %
                             options.data_dir)
  plan = plan_training_rows(metadata, options)
  num_steps = options.num_train_steps or training_utils.num_train_steps(
      options.num_train_epochs, plan["num_train"], options.train_batch_size)
  return plan, num_steps


def trainer_rows(row_mask, num_rows, shard):
  """One trainer's part of the training rows, as a row mask.

  The rows `row_mask` keeps (every row of the `num_rows` when None), in file
  order, dealt out in turn: trainer i of n gets the i-th, (i + n)-th, ...
  of them. So the shard is taken after the mask: the trainers' parts are
  disjoint and together exactly the masked rows.

  Args:
    row_mask: None or a bool array [num_rows] (plan_training_rows).
    num_rows: records in the training split.
    shard: None, or (index, count) (training_utils.training_shard).

  Returns:
    `row_mask` itself without a shard (or with one trainer), else a bool
    array [num_rows].
  """
  if shard is None or shard[1] <= 1:
    return row_mask
  index, count = shard
  if not 0 <= index < count:
    raise ValueError("shard index %d is not in [0, %d)" % (index, count))
  keep = (np.ones([num_rows], dtype=bool) if row_mask is None
          else np.asarray(row_mask, dtype=bool))
  if len(keep) != num_rows:
    raise ValueError("row_mask has %d rows, the training split %d" %
                     (len(keep), num_rows))
  mine = np.zeros([num_rows], dtype=bool)
  mine[np.flatnonzero(keep)[index::count]] = True
  return mine


def export_setup_patch(options, setup, metadata, checkpoint):
  """`export_task_patch` of a run's setup; prints what it wrote."""
  description = export_task_patch(
      checkpoint, options.output_dir, setup.config, setup.method,
      setup.insertion, setup.cardinality, setup.task,
      metadata["target_vocab_size"], setup.init_checkpoint,
      extra={"tf_random_seed": options.tf_random_seed,
             "eval_seed": options.eval_seed,
             "cls_position": setup.cls_position,
             "user_vector": setup.user_vector,
             "global_step": int(checkpoint_lib.reader(
                 checkpoint).get_tensor("global_step"))})
  print("Task patch: %s (%d bytes; fine-tuned checkpoint %d bytes, %.2f%%)"
        % (os.path.join(options.output_dir, TASK_PATCH_DIR),
           description["task_patch_bytes"],
           description["finetuned_checkpoint_bytes"],
           100.0 * description["task_patch_bytes"] /
           description["finetuned_checkpoint_bytes"]))
  return description


def prediction_record(prediction, target_tokens):
  """One line of predictions.jsonl (the format of `serving predict`)."""
  return json.dumps({
      "target": target_tokens[int(prediction["target"])],
      "top_ids": [target_tokens[i] for i in prediction["top_ids"]],
      "top_index": prediction["top_ids"].tolist(),
      "top_scores": [round(float(s), 6) for s in prediction["top_scores"]],
  })


def log_cluster_task(options, plan, num_steps, cluster_task, shard,
                     validation_every):
  """What this task of a cluster does, in its log."""
  task = "%s task %d" % cluster_task[:2]
  if shard is not None:
    logging.info("%s trains on training shard %d of %d: %d of the %d "
                 "training rows (one in %d)", task, shard[0], shard[1],
                 len(range(shard[0], plan["num_train"], shard[1])),
                 plan["num_train"], shard[1])
  elif cluster_task[0] == "evaluator" and plan["validation_mask"] is not None:
    logging.info("%s validates every checkpoint (the chief writes one every "
                 "%d steps) and keeps the best in %s", task,
                 min(options.save_checkpoints_steps, validation_every),
                 BEST_DIR)
  if options.early_stopping_patience and plan["validation_mask"] is not None:
    logging.warning("--early_stopping_patience=%d is ignored under TF_CONFIG "
                    "(early stopping is single-process only): the cluster "
                    "trains all %d steps", options.early_stopping_patience,
                    num_steps)


def test_summary(options, setup, metadata, results, reference, plan=None,
                 validation=None):
  """What metrics.json records about a test evaluation.

  Args:
    options: the run's options (eval protocol, negatives, seeds).
    setup: Setup. metadata: the dataset's.
    results: Estimator.evaluate's dict. reference: baselines.test_reference.
    plan: the plan of training rows, when trained.
    validation: read_selection's validation history, or None.
  """
  f = options
  protocol = ("accuracy over all classes" if setup.task == "classification"
              else f.eval)
  summary = {
      "method": setup.method, "task": setup.task, "eval": protocol,
      "insertion": (setup.insertion if uses_patches(setup.method)
                    else None),
      "num_eval_negatives": (f.num_eval_negatives if protocol == "sampled"
                             else None),
      "distinct_negatives": bool(f.distinct_negatives),
      "eval_seed": f.eval_seed, "global_step": int(results["global_step"]),
      "num_test": metadata["num_test"],
      "metrics": {k: (float(v) if k != "num_examples" else int(v))
                  for k, v in results.items() if k != "global_step"},
      "user_independent_reference": reference,
      "task_patch": f.task_patch or None,
      "validation": validation,
  }
  if plan is not None:
    summary["plan"] = plan
  return summary


def selection_metric(task, metric, top_k):
  """The validation metric that picks the checkpoint (None = the task's)."""
  if metric:
    return metric
  return "accuracy" if task == "classification" else "hr@%d" % top_k


def read_selection(model_dir):
  """`best/best.json` (validation history and best step), or None."""
  path = os.path.join(model_dir, BEST_DIR, training_utils.BEST_STATE_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as reader:
    return json.load(reader)


def selected_checkpoint(model_dir):
  """The best validated checkpoint of `model_dir`, else its latest one."""
  selection = read_selection(model_dir)
  if selection and selection.get("best"):
    return os.path.join(model_dir, BEST_DIR, selection["best"]["checkpoint"])
  return tf.train.latest_checkpoint(model_dir)


# ---------------------------------------------------------------------------
# One run's setup: what is fine-tuned, on which backbone, for which task
# ---------------------------------------------------------------------------

Setup = collections.namedtuple("Setup", [
    "method", "insertion", "cardinality", "config", "config_source",
    "init_checkpoint", "task_patch", "patch_description", "task",
    "cls_position", "user_vector"])
Setup.__doc__ = """What `resolve_setup` decided for a run.

init_checkpoint: the checkpoint prefix restored from (None: nothing).
task_patch: None, or (patch checkpoint prefix, backbone prefix or None).
patch_description: the task patch's task_patch.json, or None.
"""


def _setup_from_task_patch(options, metadata):
  if options.do_train:
    raise CompatibilityError("--task_patch evaluates/predicts an exported "
                             "task: pass --do_train=false")
  description, patch_prefix, backbone = load_task_patch(
      options.task_patch, options.init_checkpoint)
  config = modeling.ModelConfig.from_dict(description["model_config"])
  if options.conv_implementation:
    config = config.replace(conv_implementation=options.conv_implementation)
  for what, patch_size, data_size in (
      ("target vocabulary", description["target_vocab_size"],
       metadata["target_vocab_size"]),
      ("item vocabulary", config.item_size, metadata["item_vocab_size"])):
    if patch_size != data_size:
      raise CompatibilityError("%s: task patch %d, data %d" %
                               (what, patch_size, data_size))
  return Setup(
      method=description["method"], insertion=description["insertion"],
      cardinality=description["cardinality"] or 1, config=config,
      config_source=os.path.join(options.task_patch, TASK_PATCH_JSON),
      init_checkpoint=backbone, task_patch=(patch_prefix, backbone),
      patch_description=description, task=None,
      cls_position=description.get("cls_position") or "end",
      user_vector=description.get("user_vector") or "cls")


def _setup_from_backbone(options, metadata):
  method = options.method
  init_checkpoint = options.init_checkpoint
  if restores_backbone(method) and not init_checkpoint:
    raise CompatibilityError("--method=%s fine-tunes a pretrained backbone: "
                             "give --init_checkpoint" % method)
  if init_checkpoint:
    try:
      init_checkpoint = checkpoint_lib.resolve_checkpoint(init_checkpoint)
    except ValueError as e:
      raise CompatibilityError("--init_checkpoint: %s" % e)
  overrides = {"channels": options.channels,
               "kernel_size": options.kernel_size,
               "conv_implementation": options.conv_implementation,
               "dilations": ([int(d) for d in options.dilations]
                             if options.dilations else None)}
  config, config_source = resolve_model_config(
      init_checkpoint, options.model_config_file, options.backbone,
      metadata["item_vocab_size"], overrides)
  check_compatibility(init_checkpoint, config, metadata)
  return Setup(
      method=method,
      insertion=options.insertion or ("serial" if config.causal
                                       else "parallel"),
      cardinality=options.cardinality, config=config,
      config_source=config_source,
      # random initialization: nothing restored
      init_checkpoint=init_checkpoint if restores_backbone(method) else None,
      task_patch=None, patch_description=None, task=None,
      cls_position=options.cls_position, user_vector=options.user_vector)


def resolve_setup(options, metadata):
  """Decides and checks a run's setup before any graph is built.

  Args:
    options: the script's options (a namedtuple of flag values).
    metadata: data_loader.load_metadata of the fine-tuning dataset.

  Returns:
    Setup.

  Raises:
    CompatibilityError naming what disagrees.
  """
  if options.task_patch:
    setup = _setup_from_task_patch(options, metadata)
  else:
    setup = _setup_from_backbone(options, metadata)
  logging.info("Backbone configuration (from %s): %s", setup.config_source,
               json.dumps(setup.config.to_dict(), sort_keys=True))
  if setup.cls_position == "start" and not setup.config.causal:
    raise CompatibilityError("--cls_position=start is the ablation of the "
                             "causal backbone; the non-causal one reads "
                             "[CLS] at both ends")
  if setup.cls_position == "start" and setup.user_vector != "cls":
    raise CompatibilityError("--cls_position=start reads the [CLS] state; "
                             "--user_vector=%s does not" % setup.user_vector)
  if (setup.cls_position != "end" or setup.user_vector != "cls") and (
      options.export_dir):
    raise CompatibilityError("--export_dir serves the original [CLS]-at-end "
                             "user vector only")
  task = resolve_task(options.task, metadata, setup.patch_description,
                      options.output_dir if setup.task_patch is None else None)
  check_eval_options(metadata, task, options.eval, options.num_eval_negatives,
                     options.distinct_negatives)
  if options.loss == "softmax" and options.sampler == "lambdafm":
    raise CompatibilityError("--sampler=lambdafm draws negatives for "
                             "bce/bpr; the softmax loss uses every target")
  if setup.task_patch is None:
    check_resumable(options.output_dir, setup.config, metadata)
  return setup._replace(task=task)
