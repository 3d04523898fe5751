import os

# 8 CPU devices for the sharding tests; must precede the first jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# The CLI turns on JAX's persistent compilation cache in the user's cache
# directory; tests that exercise it name their own directory.
os.environ.setdefault("JAXBP_COMPILATION_CACHE", "off")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
# On GPUs float32 matmuls and convolutions default to TF32; compare at full precision.
jax.config.update("jax_default_matmul_precision", "highest")
# Accidental broadcasting is the usual bug of a hand-written backward pass.
jax.config.update("jax_numpy_rank_promotion", "raise")
