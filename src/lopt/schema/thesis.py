"""Sections nb15-nb17: Schröter 2022 (the coordinatewise LSTM optimizer)."""

import math

from pydantic import model_validator

from ..thesis.tasks import ACTIVATIONS, OUTPUTS
from .values import (
    Block, Count, Counts, Float, List, NonNegative, OneOf, Positive, Thesis, ThesisMlp, _epoch_divides, _fail,
)




class ShortLong(Block):
    ordered = (("short", "long"),)
    short: Count
    long: Count


class WholeSE(Block):
    super_epoch: Count
    num_super_epochs: Count


class Quadratic15(Block):
    dim: Count
    alpha: Positive
    num_seeds: Count
    num_super_epochs: Count
    super_epochs: ShortLong
    slice_lens: Counts
    beta: NonNegative  # loss weights w_t = 1 + beta (t - 1)
    whole_se: WholeSE
    num_eval_problems: Count


class Mlp15(ThesisMlp):
    num_seeds: Count
    num_super_epochs: Count
    slice_lens: Counts
    eval_every: Count

    @model_validator(mode="after")
    def _eval(self) -> "Mlp15":
        _epoch_divides(self)
        return self


class NB15(Thesis):
    quadratic: Quadratic15
    mlp: Mlp15


class Quadratic16(Block):
    dim: Count
    alpha: Positive
    num_seeds: Count
    num_super_epochs: Count
    super_epoch: Count
    slice_len: Count
    num_eval_problems: Count


class Mlp16(ThesisMlp):
    num_seeds: Count
    num_super_epochs: Count
    super_epoch: Count
    slice_len: Count
    eval_epochs: Count
    eval_every: Count

    @model_validator(mode="after")
    def _eval(self) -> "Mlp16":
        _epoch_divides(self, self.eval_epochs)
        return self


class NB16(Thesis):
    quadratic: Quadratic16
    mlp: Mlp16


class Short17(Block):
    num_super_epochs: Count
    super_epoch: Count
    slice_len: Count
    eval_steps: Count


class Mlp17(ThesisMlp):
    output: OneOf(OUTPUTS)


class Pretraining(Block):
    num_samples: Count
    batch_size: Count
    std: Positive
    omega: NonNegative

    @model_validator(mode="after")
    def _batches(self) -> "Pretraining":
        if self.num_samples < self.batch_size:
            _fail("num_samples", f"num_samples = {self.num_samples} must be >= batch_size = {self.batch_size}")
        return self


class NB17(Thesis):
    num_trainings: Count
    margin: Float(gt=0.0, lt=math.log(10.0), example=0.1)  # below ln 10 (the loss at chance on 10 classes)
    activations: List(OneOf(ACTIVATIONS), unique=True)
    compare_activations: List(OneOf(ACTIVATIONS), unique=True)
    short: Short17
    mlp: Mlp17
    pretraining: Pretraining

    @model_validator(mode="after")
    def _subset(self) -> "NB17":
        extra = [a for a in self.compare_activations if a not in self.activations]
        if extra:
            _fail("compare_activations", f"{extra} are not in activations {self.activations}: "
                                         "compare_activations must be among them")
        return self
