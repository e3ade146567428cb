"""The command-line flags both scripts share, defined once.

One name per concept (BERT's where BERT has one: `--output_dir`,
`--init_checkpoint`, `--train_batch_size`, `--num_train_steps`, ...), one
meaning, and one default unless a script must differ: then the script passes
its own default and says it in `default_notes` (shown after the meaning in
`--help`). tests/test_flags.py compares the two scripts' definitions.

Only the scripts' `main` reads flag values; `default_options(define_flags)`
gives the same names and defaults as a dict for callers of `run`.
"""
import collections
import re
import sys

from absl import flags

import training_utils
from ops import layers


_HEADER = re.compile(r"--(\w+) \((\w+)(?:; default: (.*))?\)$")
_READ_DEFAULT = {"string": str, "enum": str, "integer": int, "float": float,
                 "bool": {"true": True, "false": False}.__getitem__,
                 "list": lambda text: text.split(",")}


def flag_table(text, enums=None):
  """Flags written as `--help` shows them: {name: (kind, default, help)}.

  A table of flags as text rather than as Python tuples: it reads like the
  help it becomes. Each flag is a header line `--name (kind)` or
  `--name (kind; default: value)` followed by its help on indented lines
  (joined with spaces); lines starting with "#" are comments. `kind` is
  string, integer, float, bool (default true or false), list
  (comma-separated) or enum; an enum's choices are `enums[name]` and stand
  in the table in place of its kind. No default: None.

  Raises:
    ValueError: a line that is no header, help or comment; an enum without
      choices.
  """
  enums = enums or {}
  table = collections.OrderedDict()
  name = None
  for line in text.strip().splitlines():
    header = _HEADER.match(line)
    if header:
      name, kind, default = header.groups()
      if kind == "enum" and name not in enums:
        raise ValueError("enum flag %s has no choices" % name)
      table[name] = [
          tuple(enums[name]) if kind == "enum" else kind,
          None if default is None else _READ_DEFAULT[kind](default), []]
    elif line.startswith("    ") and name:
      table[name][2].append(line.strip())
    elif line.strip() and not line.startswith("#"):
      raise ValueError("flag table line %r" % line)
  return collections.OrderedDict(
      (name, (kind, default, " ".join(help_lines)))
      for name, (kind, default, help_lines) in table.items())


SHARED_FLAGS = flag_table("""
# Data and directories.
--data_dir (string)
    Dataset written by tfrecord_tools.convert_csv (metadata.json, TFRecords,
    vocabularies): --kind=pretrain data for pretraining, --kind=finetune data
    for fine-tuning.
--output_dir (string)
    Checkpoints, TensorBoard events, configurations and metrics.json go here;
    rerunning with the same output_dir resumes.
--init_checkpoint (string)
    Checkpoint (prefix or directory) the model starts from: pretraining
    warm-starts from it, fine-tuning restores the pretrained backbone from it.
    Adam slots are not restored, and a checkpoint already in --output_dir wins.
# The network.
--channels (integer)
    Residual channels C of the network.
--dilations (list)
    Dilations of the residual blocks, e.g. 1,4,1,4.
--kernel_size (integer)
    Width of the dilated convolutions.
--conv_implementation (enum; default: matmul)
    How dilated convolutions are computed: atrous, conv2d or matmul (same
    variables, same results; matmul is fastest on CPU).
# Training.
--learning_rate (float)
    Adam learning rate.
--beta1 (float; default: 0.9)
    Adam beta1.
--train_batch_size (integer)
    Training batch size.
--num_train_steps (integer)
    Total training steps (a resumed run trains up to this many). Default:
    --num_train_epochs over the training split.
--num_train_epochs (float)
    Epochs over the training split when --num_train_steps is not given.
--seed (integer)
    Seed of the input order and of sampling (shuffle, GRec masks, negatives,
    the few-label draw); unset: unseeded.
--tf_random_seed (integer)
    Graph-level seed (initializers, sampled-softmax candidates). Default:
    --seed.
--deterministic (bool; default: false)
    tf.config.experimental.enable_op_determinism(): with the same seeds two
    runs give identical losses and metrics (an unset --seed becomes 10;
    docs/RELIABILITY.md says what it costs).
# Evaluation and outputs.
--do_train (bool; default: true)
    Train (false: evaluate, predict or export only).
--do_eval (bool; default: true)
    Evaluate on the whole test split and write metrics.json.
--do_predict (bool; default: false)
    Write the top-ranked items or targets of every test example to --output_dir
    (predictions.tsv when pretraining, predictions.jsonl when fine-tuning).
--eval_batch_size (integer; default: 256)
    Evaluation and prediction batch size.
--top_k (integer; default: 5)
    Cut-off k of MRR@k, HR@k and NDCG@k.
# Runtime.
--save_checkpoints_steps (integer; default: 1000)
    Checkpoint every this many steps.
--keep_checkpoint_max (integer; default: 5)
    Checkpoints kept.
--save_summary_steps (integer; default: 100)
    TensorBoard summaries every this many steps.
--log_step_count_steps (integer; default: 100)
    Progress line (step/total, loss, speed, ETA) every this many steps.
--intra_op_threads (integer; default: 1)
    TensorFlow intra-op threads (1 was fastest on 2 cores:
    benchmarks/README.md).
--inter_op_threads (integer; default: 2)
    TensorFlow inter-op threads.
--save_graph_def (bool; default: false)
    Write graph.pbtxt and a .meta file with every checkpoint (and the graph
    to TensorBoard). Off: the scripts rebuild the graph from code, and the
    text graph costs about 2 s of start-up.
# A parameter-server cluster (TF_CONFIG; docs/SCALE.md).
--eval_throttle_secs (integer; default: 600)
    While training runs through train_and_evaluate (pretraining, and
    fine-tuning under TF_CONFIG, whose evaluator validates checkpoints),
    evaluate a new checkpoint at most this often; the last one is always
    evaluated.
--chief_waits_for_workers_secs (integer; default: 0)
    Under TF_CONFIG with workers: the chief waits up to this long for a
    worker's first step before its own (short runs otherwise finish on the
    chief alone).
""", enums={"conv_implementation": layers.CONV_IMPLEMENTATIONS})
SHARED_NAMES = tuple(SHARED_FLAGS)
DETERMINISTIC_SEED = 10  # an unset --seed under --deterministic


def define_shared_flags(flag_values, defaults=None, default_notes=None):
  """Defines every flag of SHARED_FLAGS in `flag_values`.

  Args:
    flag_values: absl FlagValues.
    defaults: {name: default} where a script's default must differ.
    default_notes: {name: text}: how the script fills in an unset value,
      appended to the meaning as "Default: <text>".
  """
  define_table(flag_values, SHARED_FLAGS, defaults, {
      name: "Default: %s." % text
      for name, text in (default_notes or {}).items()})


def define_table(flag_values, table, defaults=None, notes=None):
  """Defines the flags of `table`, {name: (kind, default, help)}.

  `kind` is "string", "integer", "float", "bool" or "list" (absl's
  DEFINE_<kind>), or the sequence of an enum's choices (see flag_table).
  `defaults` ({name: value}) replaces table defaults; `notes` ({name: text})
  is appended to the help of its flags.
  """
  defaults, notes = defaults or {}, notes or {}
  unknown = sorted((set(defaults) | set(notes)) - set(table))
  if unknown:
    raise ValueError("flags not in the table: %s" % unknown)
  for name, (kind, default, help_text) in table.items():
    if name in notes:
      help_text += " " + notes[name]
    default = defaults.get(name, default)
    if isinstance(kind, str):
      getattr(flags, "DEFINE_" + kind)(name, default, help_text,
                                       flag_values=flag_values)
    else:
      flags.DEFINE_enum(name, default, list(kind), help_text,
                        flag_values=flag_values)


def meaning(help_text):
  """The meaning part of a shared flag's help (without a "Default:" note)."""
  return help_text.split(" Default: ")[0]


def default_options(define_flags, **overrides):
  """{flag name: default} of a script's flags, with `overrides`.

  Lets tests and other programs call a script's `run` without a command
  line; an override that names no flag is an error.
  """
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  options = {name: flag_values[name].default for name in flag_values}
  unknown = sorted(set(overrides) - set(options))
  if unknown:
    raise ValueError("unknown options %s" % unknown)
  options.update(overrides)
  return options


def main_function(run, define_flags, user_errors):
  """A script's `main`: runs `run` on the parsed flags, read once; a user's
  mistake (one of `user_errors`) ends in a one-line `error: ...` exit."""
  def main(argv):
    del argv
    training_utils.quiet_tensorflow()
    options = {name: flags.FLAGS[name].value
               for name in default_options(define_flags)}
    try:
      run(options)
    except user_errors as e:
      sys.exit("error: %s" % e)
  return main


def options_tuple(options, define_flags):
  """`options` as a namedtuple with every flag of `define_flags`.

  Names left out take the flag's default; a name that is not a flag is a
  programming error (ValueError).
  """
  complete = default_options(define_flags, **options)
  return collections.namedtuple("Options", sorted(complete))(**complete)


def with_seeds(options):
  """`options` (a namedtuple) with the seeds the flags promise.

  --deterministic turns op determinism on and an unset --seed into
  DETERMINISTIC_SEED; an unset --tf_random_seed is --seed.
  """
  if options.deterministic:
    training_utils.enable_determinism()
    if options.seed is None:
      options = options._replace(seed=DETERMINISTIC_SEED)
  if options.tf_random_seed is None:
    options = options._replace(tf_random_seed=options.seed)
  return options
