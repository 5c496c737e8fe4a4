"""Run several ``attnviz`` commands in one ``torchrun`` job (one process group, one start-up
for all of them): ``torchrun --nproc_per_node 2 tests/two_rank_driver.py '[[argv...], ...]'``.

Every rank runs every command in order through :func:`attnviz.cli.main`, exactly as
``torchrun -m attnviz CMD ...`` would (the commands see the process group already started and
leave it running). Exits with the largest exit code.
"""

import json
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(1)

from attnviz.cli import main  # noqa: E402
from attnviz.distributed import init_from_env, shutdown  # noqa: E402

if __name__ == "__main__":
    init_from_env("cpu")
    try:
        codes = [main(argv) for argv in json.loads(sys.argv[1])]
    finally:
        shutdown()
    sys.exit(max(codes))
