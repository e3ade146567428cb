"""CPU used by other processes while a benchmark window runs.

The machine is shared: with 2 threads on 2 cores, one other busy process can
slow a small training step many times. Each timed window therefore records
how many cores the rest of the machine used meanwhile:

  other = (busy jiffies of the whole machine, from /proc/stat)
        - (jiffies of this process, from /proc/self/stat)

divided by the window's wall time. A window where `other` is above
`NOISY_OTHER_CORES` is flagged as noisy. Linux only; elsewhere the numbers
are reported as unknown (None).
"""
import os
import time

# A window is "noisy" when the other processes used more than this many
# cores on average (0.05 = 5% of one core).
NOISY_OTHER_CORES = 0.05


def _machine_busy_jiffies():
  with open("/proc/stat") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  # user nice system idle iowait irq softirq steal [guest guest_nice]; guest
  # time is already counted in user/nice.
  user, nice, system, _, _, irq, softirq = fields[:7]
  steal = fields[7] if len(fields) > 7 else 0
  return user + nice + system + irq + softirq + steal


def _own_jiffies():
  with open("/proc/self/stat") as f:
    text = f.read()
  fields = text[text.rindex(")") + 2:].split()
  return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def _snapshot():
  try:
    return time.perf_counter(), _machine_busy_jiffies(), _own_jiffies()
  except (OSError, ValueError, IndexError):
    return time.perf_counter(), None, None


class CpuWindow(object):
  """Times a window and measures the CPU other processes used in it.

  Usage:
    window = CpuWindow().start()
    ... timed work ...
    window.stop()
    window.seconds, window.other_cores, window.own_cores, window.noisy

  `start`/`stop` can be called from anywhere (e.g. a SessionRunHook), which
  is why this is not only a context manager.
  """

  def __init__(self):
    self._start = None
    self.seconds = None
    self.other_cores = None
    self.own_cores = None

  def start(self):
    self._start = _snapshot()
    return self

  def stop(self):
    end = _snapshot()
    self.seconds = end[0] - self._start[0]
    if self._start[1] is None or end[1] is None or self.seconds <= 0:
      return self
    hz = float(os.sysconf("SC_CLK_TCK"))
    machine = (end[1] - self._start[1]) / hz
    own = (end[2] - self._start[2]) / hz
    self.own_cores = own / self.seconds
    self.other_cores = max(0.0, machine - own) / self.seconds
    return self

  @property
  def noisy(self):
    return self.other_cores is not None and (
        self.other_cores > NOISY_OTHER_CORES)

  def __enter__(self):
    return self.start()

  def __exit__(self, *unused):
    self.stop()
