"""`python bench/_peak_memory.py COMMAND...`: run a command and print the peak memory of its whole
process tree (PSS, and the RSS sum), e.g. `python bench/_peak_memory.py make demo`."""

from __future__ import annotations

import subprocess
import sys

from _common import PeakMemory

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    proc = subprocess.Popen(sys.argv[1:])
    with PeakMemory(interval_s=1.0, root_pid=proc.pid) as peak:
        code = proc.wait()
    print(
        f"peak memory of the process tree: {peak.peak_pss / 2**30:.2f} GiB PSS "
        f"({peak.peak_rss / 2**30:.2f} GiB summing RSS)",
        file=sys.stderr,
    )
    sys.exit(code)
