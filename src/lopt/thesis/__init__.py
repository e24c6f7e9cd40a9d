"""Schröter 2022 (a bachelor thesis training the coordinatewise LSTM optimizer of Andrychowicz et al. 2016):
its objectives (:mod:`.tasks`) and its meta-training, evaluation, baselines and pretraining (:mod:`.training`).
The optimizer itself is :class:`lopt.learned.LSTMOptimizer`. Spec: ``THESIS.md`` (where the code differs
from the text)."""

from .tasks import ACTIVATIONS, MLPFamily, NormQuadratic, QuadraticFamily, ThesisMLP, fashion_mnist_mlp, make_mlp
from .training import MetaConfig, evaluate, pretrain, pretrain_many, share_above, train, train_many, tune_baseline

__all__ = ["ACTIVATIONS", "MLPFamily", "MetaConfig", "NormQuadratic", "QuadraticFamily", "ThesisMLP", "evaluate",
           "fashion_mnist_mlp", "make_mlp", "pretrain", "pretrain_many", "share_above", "train", "train_many", "tune_baseline"]
