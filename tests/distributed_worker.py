"""One process of a multi-process run (tests/test_distributed.py launches it).

    python distributed_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT.npz
"""
import sys

import jax
import numpy as np

coordinator, num_processes, process_id, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if num_processes > 1:
    jax.distributed.initialize(coordinator, num_processes, process_id)

from jaxbp import train  # noqa: E402

cfg = train.Config(model="cnn", data="synthetic", epochs=1, batch_size=64)
result = train.fit(cfg, quiet=True)
np.savez(out, *[train.fetch(leaf) for leaf in jax.tree.leaves(result.state)])
