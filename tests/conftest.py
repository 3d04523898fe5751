import os

# Must precede the first jax import, and reaches the `jaxbp train` processes the
# tests start. 8 CPU devices for the sharding tests. The tests compile hundreds
# of small programs and run each a few times: without LLVM's optimizations
# XLA:CPU compiles them in half the time (the suite: ~9.5 -> ~5 min on 2 cores).
# XLA's HLO passes (fusion, layout, the algebra) are the same; only machine code
# generation changes (it may round at the last bit, e.g. fused multiply-adds,
# which no tolerance here relies on). Speed is measured by the benchmarks, with
# the default flags.
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

# The default run (not the slow tests) also with XLA:CPU's older fusion emitters
# (LLVM IR written directly, not through MLIR): 0.6x its time (jaxlib 0.10.2,
# 2 cores: 374-395 -> 239-249 s). They round some float32 arithmetic differently
# in the last bit from program to program, which no tolerance of the default run
# relies on. The slow tests compare whole runs compiled as different programs
# bit for bit (uint8 pixels against their floats, an epoch against its steps):
# jaxbp promises that for programs compiled as a user's are, so they are.
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def pytest_configure(config):
    from jax._src import xla_bridge
    if config.option.markexpr == "not slow" and "fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
        assert not xla_bridge.backends_are_initialized(), "XLA_FLAGS must be set before JAX starts its backend"
        os.environ["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {LEGACY_EMITTERS}"


# The CLI turns on JAX's persistent compilation cache (in the user's cache
# directory by default). The tests' many `jaxbp train` processes share one
# fresh directory instead, made once here and inherited by the workers; the
# test of the cache itself names its own.
if "JAXBP_COMPILATION_CACHE" not in os.environ:
    import tempfile
    os.environ["JAXBP_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jaxbp-tests-xla-")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
# On GPUs float32 matmuls and convolutions default to TF32; compare at full precision.
jax.config.update("jax_default_matmul_precision", "highest")
# Accidental broadcasting is the usual bug of a hand-written backward pass.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Property tests draw the same examples on every run (CI and a user's run fail
# or pass alike); `pytest --hypothesis-profile explore` draws fresh ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("jaxbp", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile("jaxbp")
