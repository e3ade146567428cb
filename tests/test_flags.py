"""Flags both scripts share have one name, meaning and default."""
from absl import flags

import nextitnet_pretrain
import peterrec_finetune

RUNTIME_FLAGS = ("save_checkpoints_steps", "keep_checkpoint_max",
                 "save_summary_steps", "log_step_count_steps",
                 "intra_op_threads", "inter_op_threads")


def _flags(define):
  values = flags.FlagValues()
  define(values)
  return values


def test_shared_runtime_flags_are_defined_once():
  pretrain = _flags(nextitnet_pretrain.define_flags)
  finetune = _flags(peterrec_finetune.define_flags)
  for name in RUNTIME_FLAGS + ("beta1", "top_k"):
    assert (pretrain[name].default, pretrain[name].help) == (
        finetune[name].default, finetune[name].help), name
