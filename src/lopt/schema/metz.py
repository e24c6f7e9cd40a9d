"""Sections nb01-nb08: Metz et al. 2019 (pathologies of unrolled optimization; the learned CNN optimizer)."""

from typing import Annotated

from pydantic import model_validator

from ..generalization import DATA
from ..tasks import SPLITS
from .values import (
    DIGITS_SIZE, Block, Count, Counts, Decay, FASHION_SIZE, FashionMLP, FashionPool, Float, GRID_OPTIMIZERS, HeldOutRuns, Hidden,
    Int, List, LogGrid, NonNegative, OneOf, Pairs, PerSplit, Positive, Rule, _divides, _fail,
)




class LrSweep(Block):
    ordered = (("lr_min", "lr_max"),)
    momentum: Decay
    lr_min: Positive
    lr_max: Positive


class Zoom(Block):
    levels: Count
    points: Int(2, example=201)


class NB01(Block):
    learning_rate: Positive
    num_thetas: Int(2, example=2000)
    theta_max: Float(gt=0.0, lt=1.0, example=0.99)  # the largest momentum of the sweep
    steps: Counts
    lr_sweep: LrSweep
    quad_eigenvalues: List(Positive)
    quad_thetas: List(Positive)  # learning rates of gradient descent on the quadratic
    quad_steps: List(Count, min_length=2)  # a slope over T needs two T
    jump_window: Count
    zoom: Zoom


class NB02(FashionMLP):
    ordered = (("lr_min", "lr_max"),)
    lr_min: Positive
    lr_max: Positive
    num_lrs: Int(2, example=100)
    adam_steps: Count
    base_lr: Positive
    noise: NonNegative
    slice_steps: Counts
    slice_radius: Positive
    num_points_1d: Int(2, example=81)
    num_points_2d: Int(2, example=21)
    num_seeds: Count
    train_steps: Count
    train_lr: Positive
    train_horizon: Count
    train_length: Count
    train_tasks: Pairs  # the Merged estimator needs >= 2


class NB03(FashionMLP):
    init_lr: Positive
    horizon: Count
    truncations: Counts
    num_runs: Count
    num_tasks: Count
    outer_lr: Positive
    probe_truncation: Count
    eval_tasks: Count
    sweep_lrs: Int(2, example=7)

    @model_validator(mode="after")
    def _truncations(self) -> "NB03":
        bad = [t for t in self.truncations if self.horizon % t]
        if bad:
            _fail("truncations", f"{bad} do not divide horizon = {self.horizon}: every truncation must divide "
                                 f"the horizon, e.g. truncations: [1, 10, 100, 1000] with horizon: 1000")
        if self.probe_truncation > self.horizon:
            _fail("probe_truncation", f"probe_truncation = {self.probe_truncation} must be <= horizon = {self.horizon}")
        return self


class NB04(FashionMLP):
    pool: FashionPool
    num_pairs: Pairs
    sigma: Positive
    lengths: Counts
    truncation: Count
    outer_steps: Count
    train_horizon: Count
    train_length: Count
    meta_lr: Positive
    step_scales: List(Positive, min_length=0)
    snapshot_every: Count
    unbiased_pairs: Pairs
    unbiased_lengths: Counts

    @model_validator(mode="after")
    def _truncated(self) -> "NB04":
        if not any(t % self.truncation == 0 for t in self.lengths):
            _fail("truncation", f"truncation = {self.truncation} divides none of lengths {self.lengths}: the truncated "
                                "estimators are measured at the lengths that are multiples of it (e.g. truncation: 10)")
        return self


class Curriculum(Block):
    start: Count
    end: Count
    jitter: Float(ge=0.0, lt=1.0, example=0.2)

    @model_validator(mode="after")
    def _grows(self) -> "Curriculum":
        if self.start > self.end:
            _fail("start", f"start = {self.start} must be <= end = {self.end} (the length grows from start to end)")
        return self


class ClassSplit(Block):
    """Notebooks 05 and 08: k-way problems over a class split of Fashion-MNIST (lopt.classsplit)."""

    train_classes: List(Int(0, 9, example=4), unique=True)
    test_classes: List(Int(0, 9, example=5), unique=True)
    num_classes: Int(2, example=3)
    per_class: PerSplit
    image_size: FashionPool
    channels: Hidden
    strides: Counts
    batch_size: Count
    loss_cap_factor: Positive
    mlp_hidden: Count
    horizon: Count
    curriculum: Curriculum
    num_pairs: Pairs
    outer_steps: Count
    outer_lr: Positive
    outer_clip: Positive
    theta_seeds: Count
    init_noise: NonNegative
    eval_every: Count
    eval_tasks: Count
    tune_tasks: Count
    lr_grid: LogGrid
    start_grid: LogGrid

    @model_validator(mode="after")
    def _split(self) -> "ClassSplit":
        both = sorted(set(self.train_classes) & set(self.test_classes))
        if both:
            _fail("test_classes", f"classes {both} are in train_classes and test_classes: "
                                  "held-out classes must be unseen")
        k_max = min(len(self.train_classes), len(self.test_classes))
        if self.num_classes > k_max:
            _fail("num_classes", f"num_classes = {self.num_classes} must be <= {k_max} (the classes of each side)")
        if len(self.strides) != len(self.channels):
            _fail("strides", f"strides {self.strides} need one entry per conv layer of channels {self.channels}")
        return self


class NB05(ClassSplit):
    fresh_tasks: Count


class FixedLengths(Block):
    short: Count
    medium: Count
    long: Count


class NB08(ClassSplit):
    fixed_lengths: FixedLengths
    late_fraction: Float(gt=0.0, le=1.0, example=0.25)

    @model_validator(mode="after")
    def _lengths(self) -> "NB08":
        for name, length in self.fixed_lengths:
            if length > self.horizon:
                _fail(f"fixed_lengths.{name}", f"{name} = {length} must be <= horizon = {self.horizon}")
        return self


class NB06(HeldOutRuns):
    adam8p_configs: Count
    adam8p_problems: Count
    timing_steps: Count
    timing_repeats: Count


class Nb07Task(Block):
    """An out-of-distribution task family (lopt.generalization.build)."""

    data: OneOf(DATA)
    model: OneOf(("cnn", "mlp"))
    hidden: Hidden
    strides: Counts | None = None
    num_classes: Int(2, 10, example=10) | None = None
    image_size: Count | None = None
    per_class: PerSplit | None = None
    pool_per_class: PerSplit | None = None

    @model_validator(mode="after")
    def _data(self) -> "Nb07Task":
        if self.model == "cnn" and self.strides is not None and len(self.strides) != len(self.hidden):
            _fail("strides", f"strides {self.strides} need one entry per conv layer of hidden {self.hidden}")
        if self.data == "held_out":
            return self
        for key in ("num_classes", "image_size", "per_class", "pool_per_class"):
            if getattr(self, key) is None:
                _fail(key, f"missing: data = {self.data} needs num_classes, image_size, per_class and pool_per_class")
        side = DIGITS_SIZE if self.data == "digits" else FASHION_SIZE
        _divides("image_size", self.image_size, side, f"{self.data}'s image size")
        for split in SPLITS:
            if getattr(self.per_class, split) > getattr(self.pool_per_class, split):
                _fail("per_class", f"per_class.{split} must be <= pool_per_class.{split} "
                                   "(a problem's images are drawn from the pool)")
        return self


class NB07(HeldOutRuns):
    workers: Count
    baselines: List(OneOf(GRID_OPTIMIZERS), unique=True)
    lr_grid: LogGrid
    tasks: Annotated[dict[str, Nb07Task], Rule("a mapping of task names to task entries", "{...}")]

    @model_validator(mode="after")
    def _fig7(self) -> "NB07":
        missing = [t for t in ("cnn6_digits", "cnn6_fashion_mnist") if t not in self.tasks]
        if missing:
            _fail("tasks", f"needs {missing} (Fig. 7's 6-layer CNNs; notebook 07 asserts them)")
        return self
