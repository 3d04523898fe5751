#!/usr/bin/env bash
# One call on a GPU machine: benchmarks first (the numbers BENCHMARKS.md needs),
# then the test suite on the GPU backend, each part time-boxed (at most 580 s in
# all, under the 600 s a command may run). Everything goes to $OUT.
#   bash benchmarks/gpu_check.sh            (from the repository root)
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
log="$OUT/gpu_check.log"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
} > "$log" 2>&1
timeout ${BENCH_TIMEOUT:-280} python3 benchmarks/gpu.py "$OUT/gpu_results.md" >> "$log" 2>&1
echo "benchmarks exit $?" >> "$log"
# Time to 99 % on real MNIST with the defaults, 5 seeds (cold, then warm compilation cache),
# where the MNIST files are at hand ($MNIST_DIR, else shared/data/mnist): nothing is downloaded there.
MNIST_DIR=${MNIST_DIR:-shared/data/mnist}
if [ -d "$MNIST_DIR" ]; then
  timeout ${TTA_TIMEOUT:-100} python3 benchmarks/time_to_accuracy.py --data-dir "$MNIST_DIR" recipe \
    > "$OUT/time_to_accuracy.md" 2>&1
  echo "time to accuracy exit $?" >> "$log"
  # The recipe's explicit conv was chosen on a CPU; the implicit one (cuDNN) for comparison.
  timeout ${TTA_IMPLICIT_TIMEOUT:-40} python3 benchmarks/time_to_accuracy.py --data-dir "$MNIST_DIR" recipe \
    --seeds 0 --train-args "--algorithm implicit" > "$OUT/time_to_accuracy_implicit.md" 2>&1
  echo "time to accuracy (implicit) exit $?" >> "$log"
else
  echo "time to accuracy skipped: no MNIST files in $MNIST_DIR" >> "$log"
fi
# Tests on the GPU (tests/conftest.py sets matmul precision 'highest'). The conftest
# also lowers XLA's backend optimization level, for CPU compile times; on the GPU
# the tests run at XLA's default level (3), stated here so the conftest leaves it.
XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=3" \
timeout ${TEST_TIMEOUT:-160} python3 -m pytest -q -x -n 8 -p no:cacheprovider \
  tests/test_dense.py tests/test_conv.py tests/test_pool.py tests/test_norm.py tests/test_loss.py \
  tests/test_activation.py tests/test_gradcheck.py tests/test_train.py tests/test_evaluation.py >> "$log" 2>&1
echo "tests exit $?" >> "$log"
tail -5 "$log"
