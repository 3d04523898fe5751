"""`jaxbp bench` with Flax NNX beside jaxbp: the same model, options and step.

    python benchmarks/vs_flax.py --model resnet20 --batch-size 32 [--json]

Takes every option of `jaxbp bench` (`jaxbp bench --help`); the Flax NNX
versions of the registry models are in benchmarks/flax_models.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flax_models import BASELINES  # noqa: E402
from jaxbp import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(["bench", *sys.argv[1:]], baselines=BASELINES))
