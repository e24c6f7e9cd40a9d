"""Learned optimizers: families of optimizers indexed by meta-parameters theta, sharing the
``LearnedOptimizer`` interface of :mod:`lopt.optimizers` (``init(key)``, ``opt_fn(theta)``)."""

from .gru import GRUOptimizer
from .lstm import LSTMOptimizer
from .mlp import MLPOptimizer

__all__ = ["GRUOptimizer", "LSTMOptimizer", "MLPOptimizer"]
