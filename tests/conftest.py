import os

# 8 CPU devices for the sharding tests; must precede the first jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

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
