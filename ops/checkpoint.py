"""Reading checkpoints and warm-starting graphs from them, BERT style."""
import collections
import re

import tensorflow as tf

_OPTIMIZER_SLOT = re.compile(r"(/Adam(_\d+)?$)|(^beta[12]_power(_\d+)?$)")
_SLOT_SUFFIX = re.compile(r"/Adam(_\d+)?$")
_BOOKKEEPING = ("global_step",)


def is_optimizer_variable(name):
  """True for Adam slots (`.../Adam`, `.../Adam_1`) and `beta1/2_power`."""
  return bool(_OPTIMIZER_SLOT.search(name))


def slot_owner(name):
  """The variable an Adam slot belongs to (`x/Adam_1` -> `x`); other names
  unchanged."""
  return _SLOT_SUFFIX.sub("", name)


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


def _slice_info(variable):
  # TensorFlow records a part's place in its partitioned variable (what the
  # Saver and init_from_checkpoint read) here; there is no public accessor.
  return getattr(variable, "_save_slice_info", None)


def checkpoint_name(variable):
  """The name a Saver stores `variable` under: `variable_name`, or for a
  part of a partitioned variable (`x/part_1`) the whole variable's (`x`)."""
  info = _slice_info(variable)
  return info.full_name if info is not None else variable_name(variable)


def saved_variables(variables):
  """The graph's variables as a checkpoint holds them.

  Args:
    variables: list of tf.Variable; the parts of a partitioned variable
      (as tf.compat.v1.global_variables() lists them) are gathered under
      the whole variable's name.

  Returns:
    OrderedDict {checkpoint name: (variable, or list of its parts in order
    of their offsets, full shape as a list of ints)}, in order of first
    appearance.
  """
  parts = collections.OrderedDict()
  for variable in variables:
    parts.setdefault(checkpoint_name(variable), []).append(variable)
  saved = collections.OrderedDict()
  for name, group in parts.items():
    info = _slice_info(group[0])
    if info is None:
      saved[name] = (group[0], group[0].shape.as_list())
    else:
      group.sort(key=lambda v: list(_slice_info(v).var_offset))
      saved[name] = (group, list(info.full_shape))
  return saved


def assignment_map_from_checkpoint(variables, checkpoint, exclude=None):
  """Maps checkpoint names to graph variables present in both with one shape.

  A partitioned variable's parts are mapped together, as a list, to the
  whole variable's name (init_from_checkpoint reads each part's slice), so
  a checkpoint restores into any partitioning.

  Args:
    variables: list of tf.Variable (e.g. tf.compat.v1.trainable_variables()).
    checkpoint: checkpoint prefix or directory.
    exclude: optional predicate on a variable name; True keeps it out of the
      map (e.g. PeterRec's `mp` patches).

  Returns:
    (assignment_map, restored_names): an OrderedDict {name: variable or list
    of parts} for `tf.compat.v1.train.init_from_checkpoint` and the set of
    mapped names.

  Raises:
    ValueError: when a variable present in both has a different shape; the
      message names the variable and both shapes.
  """
  stored = model_variable_shapes(checkpoint)
  assignment_map = collections.OrderedDict()
  mismatches = []
  for name, (variable, graph_shape) in saved_variables(variables).items():
    if name not in stored or (exclude is not None and exclude(name)):
      continue
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


def unmatched_variables(variables, checkpoint):
  """What keeps a graph's variables and a checkpoint from matching one to one.

  Every variable counts, optimizer slots and `global_step` included, under
  its checkpoint name (`checkpoint_name`).

  Args:
    variables: list of tf.Variable (e.g. tf.compat.v1.global_variables()).
    checkpoint: checkpoint prefix or directory.

  Returns:
    dict of sorted lists: "graph_only" (names the checkpoint lacks),
    "checkpoint_only" (stored names no variable takes) and "shapes"
    ("name: checkpoint [..], graph [..]"). All empty: a Saver of these
    variables restores every one of them and leaves nothing unused.
  """
  stored = {name: list(shape) for name, shape in
            reader(checkpoint).get_variable_to_shape_map().items()}
  graph = {name: shape for name, (_, shape) in
           saved_variables(variables).items()}
  return {
      "graph_only": sorted(set(graph) - set(stored)),
      "checkpoint_only": sorted(set(stored) - set(graph)),
      "shapes": sorted("%s: checkpoint %s, graph %s" % (name, stored[name],
                                                         graph[name])
                       for name in set(graph) & set(stored)
                       if graph[name] != stored[name]),
  }


def stored_slices(checkpoint):
  """Tensors a checkpoint stores as slices, and how many of each.

  A Saver writes a partitioned variable as one entry of the whole tensor's
  name and shape plus one slice entry per part (keyed by a NUL byte, the
  name, a NUL byte and the slice, in the reader's `debug_string`);
  `list_variables` and `get_tensor` show only the whole tensor.

  Returns:
    dict {name: number of slices}; empty for a checkpoint of whole tensors.
  """
  counts = collections.Counter()
  for line in reader(checkpoint).debug_string().split(b"\n"):
    if line.startswith(b"\0"):
      counts[line[1:line.index(b"\0", 1)].decode("utf-8")] += 1
  return dict(counts)


def partition_blocks(size, partitions):
  """(offset, length) of each part when `size` rows are split in
  `partitions`, as tf.compat.v1.fixed_size_partitioner does: consecutive
  blocks, the first `size % partitions` one row longer.

  Raises:
    ValueError: partitions < 1 or > size.
  """
  if not 1 <= partitions <= size:
    raise ValueError("cannot split %d rows into %d partitions" %
                     (size, partitions))
  blocks, offset = [], 0
  for index in range(partitions):
    length = size // partitions + (1 if index < size % partitions else 0)
    blocks.append((offset, length))
    offset += length
  return blocks


def slice_spec(shape, axis, offset, length):
  """The Saver's `shape_and_slice` string of a block of a tensor.

  E.g. shape [7, 3], axis 0, rows 4..6: "7 3 4,3:0,3" (the full shape, then
  `start,length` of every dimension), as a partitioned variable's part is
  saved.
  """
  ranges = ["%d,%d" % ((offset, length) if dim == axis else (0, size))
            for dim, size in enumerate(shape)]
  return "%s %s" % (" ".join(str(size) for size in shape), ":".join(ranges))


def log_variables(variables, restored_names, log_fn=None,
                  trained_names=None):
  """Logs every variable with its shape, marking those warm-started (and,
  given `trained_names`, whether each is trained or frozen). A part of a
  partitioned variable is marked by its whole variable's name."""
  log_fn = log_fn or tf.compat.v1.logging.info
  for variable in variables:
    name = checkpoint_name(variable)
    mark = ", *INIT_FROM_CKPT*" if name in restored_names else ""
    if trained_names is not None:
      mark += ", TRAINED" if name in trained_names else ", frozen"
    log_fn("  name = %s, shape = %s%s", variable_name(variable),
           variable.shape, mark)
