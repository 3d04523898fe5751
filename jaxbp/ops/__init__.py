"""The ops with the hand-derived backward rules (``jax.custom_vjp``).

Same names as :mod:`jaxbp.autodiff`, whose functions are these ops' autodiff
twins, so a model can be built on either namespace.
"""
from jaxbp.ops._activation import leaky_relu, relu, sigmoid, tanh
from jaxbp.ops._conv import DEFAULT_ALGORITHM, conv2d
from jaxbp.ops._dense import dense
from jaxbp.ops._loss import euclidean_loss, mse, softmax_cross_entropy
from jaxbp.ops._norm import batch_norm
from jaxbp.ops._pool import avg_pool2d, max_pool2d

__all__ = ["avg_pool2d", "batch_norm", "conv2d", "dense", "euclidean_loss", "leaky_relu",
           "max_pool2d", "mse", "relu", "sigmoid", "softmax_cross_entropy", "tanh"]
