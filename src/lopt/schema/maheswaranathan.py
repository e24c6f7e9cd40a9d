"""Sections nb09-nb14: Maheswaranathan et al. 2021 (the GRU optimizers and their dynamics)."""

from typing import Annotated

from pydantic import model_validator

from .values import (
    Block, Count, Decay, DecayAxis, Float, Fraction, GRU_TASKS, GruBlock, Hidden, Int, List, NonNegative, OneOf,
    Positive, RateAxis, Rule, _fail,
)




class NB09(Block):
    learning_rate: Positive
    clip_threshold: Positive
    momentum: Decay
    rms_decay: Decay
    grad_max: Positive
    num_grads: Int(3, example=601)
    num_states: Int(2, example=5)
    history_steps: Count

    @model_validator(mode="after")
    def _odd(self) -> "NB09":
        if self.num_grads % 2 == 0:
            _fail("num_grads", f"num_grads = {self.num_grads} must be odd: the grid's middle point is g = 0, "
                               f"where the momentum offsets are read (e.g. num_grads: {self.num_grads + 1})")
        return self


class Meta10(Block):
    """Keyword arguments of lopt.outer.meta_optimizer."""

    clip_value: Positive
    l2: NonNegative
    decay_every: Count
    decay_factor: Float(gt=0.0, le=1.0, example=0.8)


class Gru10(Block):
    hidden: Count
    input_scale: Positive
    output_scale: Positive
    outer_steps: Count
    meta_batch: Count
    pilot_steps: Count
    pilot_lrs: List(Positive)
    remat: bool
    num_samples: Count
    tune_tasks: Count
    select_every: Count
    mlp_hidden: Hidden | None = None  # two_moons only: the MLP of the two-moons problems


class MomentumGrid(Block):
    learning_rate: RateAxis
    beta: DecayAxis


class RmspropGrid(Block):
    learning_rate: RateAxis
    decay: DecayAxis


class AdamGrid(Block):
    learning_rate: RateAxis
    b1: DecayAxis
    b2: DecayAxis


class Grids10(Block):
    momentum: MomentumGrid
    rmsprop: RmspropGrid
    adam: AdamGrid


class NB10(Block):
    unroll_steps: Count
    num_test: Count
    num_valid: Count
    meta: Meta10
    tasks: Annotated[dict[OneOf(GRU_TASKS), Gru10], Rule("a mapping of task names to GRU settings", "{...}")]
    grids: Grids10

    @model_validator(mode="after")
    def _two_moons(self) -> "NB10":
        if "two_moons" not in self.tasks:
            _fail("tasks", "needs two_moons (notebook 10 builds its family from tasks.two_moons.mlp_hidden)")
        for name, t in self.tasks.items():
            if (t.mlp_hidden is None) == (name == "two_moons"):
                _fail(f"tasks.{name}", "mlp_hidden is two_moons' MLP: required there (e.g. mlp_hidden: [16, 16, 16]), "
                                       "unknown for the other tasks")
        return self


class NB11(GruBlock):
    max_coords: Count
    fp_seeds: Count
    fp_steps: Count
    fp_tol: Positive
    mode_extent: Positive
    num_shifts: Count
    num_random_dirs: Count
    num_spectra: Count
    eval_runs: Count


class NB12(GruBlock):
    grad_factor: Positive
    num_grads: Int(2, example=801)  # the linear range is searched on num_grads // 2 magnitudes
    large_fraction: Fraction


class NB13(GruBlock):
    min_warmup_steps: Count

    @model_validator(mode="after")
    def _warmup(self) -> "NB13":
        if self.min_warmup_steps >= self.num_steps:
            _fail("min_warmup_steps", f"min_warmup_steps = {self.min_warmup_steps} must be < num_steps = "
                                      f"{self.num_steps} (a warm-up peaks before the run ends)")
        return self


class NB14(GruBlock):
    grad_factor: Positive
    wide_grad_factor: Positive
    num_inputs: Count
    num_seeds: Count
    fp_steps: Count
    fp_tol: Positive
