"""Reading checkpoints and warm-starting graphs from them, BERT style."""
import collections
import re

import tensorflow as tf

_OPTIMIZER_SLOT = re.compile(r"(/Adam(_\d+)?$)|(^beta[12]_power(_\d+)?$)")
_BOOKKEEPING = ("global_step",)


def is_optimizer_variable(name):
  """True for Adam slots (`.../Adam`, `.../Adam_1`) and `beta1/2_power`."""
  return bool(_OPTIMIZER_SLOT.search(name))


def model_variable_shapes(checkpoint):
  """Model variables stored in a checkpoint, optimizer state left out.

  Args:
    checkpoint: checkpoint prefix or directory (its latest checkpoint).

  Returns:
    OrderedDict {name: list of ints}, sorted by name.
  """
  shapes = collections.OrderedDict()
  for name, shape in sorted(
      reader(checkpoint).get_variable_to_shape_map().items()):
    if is_optimizer_variable(name) or name in _BOOKKEEPING:
      continue
    shapes[name] = list(shape)
  return shapes


def reader(checkpoint):
  """A CheckpointReader of a prefix or a directory's latest checkpoint.

  Unlike tf.train.load_checkpoint, it does not ask whether a prefix is a
  directory, which ram:// answers yes for any prefix of a file name.
  """
  return tf.compat.v1.train.NewCheckpointReader(resolve_checkpoint(checkpoint))


def resolve_checkpoint(checkpoint):
  """A checkpoint prefix from a prefix or a directory; clear error if none."""
  if tf.io.gfile.exists(checkpoint + ".index"):
    return checkpoint
  if tf.io.gfile.isdir(checkpoint):
    latest = tf.train.latest_checkpoint(checkpoint)
    if latest is None:
      raise ValueError("No checkpoint found in directory %s" % checkpoint)
    return latest
  if not tf.io.gfile.exists(checkpoint + ".index"):
    raise ValueError("Checkpoint %s does not exist (no %s.index)" %
                     (checkpoint, checkpoint))
  return checkpoint


def variable_name(variable):
  """`scope/name` without the `:0` suffix."""
  return re.sub(r":\d+$", "", variable.name)


def assignment_map_from_checkpoint(variables, checkpoint, exclude=None):
  """Maps checkpoint names to graph variables present in both with one shape.

  Args:
    variables: list of tf.Variable (e.g. tf.compat.v1.trainable_variables()).
    checkpoint: checkpoint prefix or directory.
    exclude: optional predicate on a variable name; True keeps it out of the
      map (e.g. PeterRec's `mp` patches).

  Returns:
    (assignment_map, restored_names): an OrderedDict {name: variable} for
    `tf.compat.v1.train.init_from_checkpoint` and the set of mapped names.

  Raises:
    ValueError: when a variable present in both has a different shape; the
      message names the variable and both shapes.
  """
  stored = model_variable_shapes(checkpoint)
  assignment_map = collections.OrderedDict()
  mismatches = []
  for variable in variables:
    name = variable_name(variable)
    if name not in stored or (exclude is not None and exclude(name)):
      continue
    graph_shape = variable.shape.as_list()
    if graph_shape != stored[name]:
      mismatches.append("%s: checkpoint %s, graph %s" %
                        (name, stored[name], graph_shape))
      continue
    assignment_map[name] = variable
  if mismatches:
    raise ValueError(
        "Checkpoint %s does not fit this model (different sizes):\n  %s" %
        (checkpoint, "\n  ".join(mismatches)))
  return assignment_map, set(assignment_map)


def check_shapes_match(checkpoint, expected_shapes):
  """Raises ValueError naming every variable whose stored shape differs.

  Args:
    checkpoint: checkpoint prefix or directory.
    expected_shapes: dict {name: shape} (e.g. modeling.backbone_variable_shapes).
      Names absent from the checkpoint are reported as missing.
  """
  stored = model_variable_shapes(checkpoint)
  problems = []
  for name, shape in sorted(expected_shapes.items()):
    if name not in stored:
      problems.append("%s: missing from the checkpoint (expected %s)" %
                      (name, list(shape)))
    elif list(shape) != stored[name]:
      problems.append("%s: checkpoint %s, configuration/data %s" %
                      (name, stored[name], list(shape)))
  if problems:
    raise ValueError(
        "Checkpoint %s does not match the configuration and data:\n  %s" %
        (checkpoint, "\n  ".join(problems)))


def log_variables(variables, restored_names, log_fn=None,
                  trained_names=None):
  """Logs every variable with its shape, marking those warm-started (and,
  given `trained_names`, whether each is trained or frozen)."""
  log_fn = log_fn or tf.compat.v1.logging.info
  for variable in variables:
    name = variable_name(variable)
    mark = ", *INIT_FROM_CKPT*" if name in restored_names else ""
    if trained_names is not None:
      mark += ", TRAINED" if name in trained_names else ", frozen"
    log_fn("  name = %s, shape = %s%s", name, variable.shape, mark)
