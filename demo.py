"""Built-in demo: the paper's table on a generated world, end to end.

`bash run.sh demo` runs this. With no external data it generates the demo
world (tfrecord_tools/synthetic.py: latent user groups drive the source
sequences and both target tasks), converts it to TFRecord, pretrains a
small NextItNet, fine-tunes PeterRec (serial and parallel), PeterZero,
FineAll, FineCLS, FineLast1 and FineLast2 on a group-classification task and
a cold-start recommendation task, and prints the table
(`reproduce_tables.py --dataset=demo`; output in output/tables/demo, and a
second run skips the cells already done). Any reproduce_tables flag works,
e.g. `bash run.sh demo --demo_seed=1 --output_dir=output/tables/demo1`.
"""
from absl import app

import reproduce_tables

if __name__ == "__main__":
  reproduce_tables.define_flags()
  app.run(reproduce_tables.main)
