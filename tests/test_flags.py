"""Both scripts' flags: one name, meaning and default per shared concept."""
from absl import flags

import nextitnet_pretrain
import peterrec_finetune
import script_flags

# Defaults that must differ, and why (the help of each says it).
SCRIPT_DEFAULTS = {
    # Pretraining fills these from --preset; fine-tuning has its own values.
    "learning_rate", "train_batch_size", "num_train_epochs",
    # From --preset (pretraining) or the backbone's configuration
    # (fine-tuning).
    "channels", "dilations", "kernel_size",
    # Pretraining keeps the original scripts' seed 10; fine-tuning is
    # unseeded as the original fine-tuning scripts.
    "seed",
    # Fine-tuning's evaluator validates every checkpoint, and its runs are
    # short: its chief waits for the workers.
    "eval_throttle_secs", "chief_waits_for_workers_secs",
}
# BERT's names for the concepts the two scripts once named differently.
OLD_NAMES = ("model_dir", "batch_size", "train_steps", "num_epochs")


def _flags(define):
  values = flags.FlagValues()
  define(values)
  return values


def test_every_shared_flag_has_one_name_meaning_and_default():
  pretrain = _flags(nextitnet_pretrain.define_flags)
  finetune = _flags(peterrec_finetune.define_flags)
  common = set(pretrain) & set(finetune)
  # Every name both scripts define is a shared definition, and all of them
  # are defined in both.
  assert common == set(script_flags.SHARED_NAMES)
  for name in sorted(common):
    a, b = pretrain[name], finetune[name]
    assert type(a) is type(b), name
    assert (script_flags.meaning(a.help) ==
            script_flags.meaning(b.help)), name
    if name in SCRIPT_DEFAULTS:
      # A default that differs is said in the help of the script.
      assert a.default != b.default or a.help != b.help, name
    else:
      assert (a.default, a.help) == (b.default, b.help), name
  for name in OLD_NAMES:
    assert name not in pretrain and name not in finetune, name


def test_script_defaults_are_stated_in_help():
  pretrain = _flags(nextitnet_pretrain.define_flags)
  assert "by --preset (default: 0.001" in pretrain["learning_rate"].help
  assert "default: 32; demo: 2; paper: 32" in pretrain["train_batch_size"].help
  finetune = _flags(peterrec_finetune.define_flags)
  assert finetune["train_batch_size"].default == 64
  assert "backbone's configuration" in finetune["channels"].help


def test_options_fill_defaults_and_refuse_unknown_names():
  options = peterrec_finetune.default_options(top_k=7)
  assert options["top_k"] == 7 and options["eval_batch_size"] == 256
  f = script_flags.options_tuple({"top_k": 3},
                                 nextitnet_pretrain.define_flags)
  assert (f.top_k, f.seed, f.output_dir) == (3, 10, None)
  try:
    nextitnet_pretrain.default_options(model_dir="x")
  except ValueError as e:
    assert "model_dir" in str(e)
  else:
    raise AssertionError("an unknown option was accepted")


def test_flag_table_reads_kinds_defaults_and_help():
  table = script_flags.flag_table("""
# A comment.
--steps (integer; default: 3)
    Many
    steps.
--where (string)
    A path.
--dims (list; default: 1,4)
    Dims.
--quiet (bool; default: false)
    Quiet.
--mode (enum; default: b)
    Mode.
""", enums={"mode": ("a", "b")})
  assert list(table) == ["steps", "where", "dims", "quiet", "mode"]
  assert table["steps"] == ("integer", 3, "Many steps.")
  assert table["where"] == ("string", None, "A path.")
  assert table["dims"][1] == ["1", "4"] and table["quiet"][1] is False
  assert table["mode"][:2] == (("a", "b"), "b")
  values = flags.FlagValues()
  script_flags.define_table(values, table, defaults={"steps": 5},
                            notes={"where": "Default: here."})
  assert values["steps"].default == 5
  assert values["where"].help == "A path. Default: here."
  for bad_table, enums in (("--mode (enum)\n    Mode.", None),
                           ("steps: 3", None)):
    try:
      script_flags.flag_table(bad_table, enums)
    except ValueError:
      pass
    else:
      raise AssertionError("accepted %r" % bad_table)
