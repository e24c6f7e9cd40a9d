"""Value types of the params.yaml schema (counts, finite rates, decays, names, lists) and the sub-models the
notebook sections share. Each type carries a :class:`Rule` (what is allowed, an example) for the error messages."""


import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Sequence, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from ..data import NUM_VALID
from ..tasks import SPLITS
from ..tuning import SCALES

PROFILES = ("smoke", "cpu", "gpu")
GRU_TASKS = ("linear_regression", "rosenbrock", "two_moons")  # lopt.recurrent.family's task families (notebook 10)
GRID_OPTIMIZERS = ("momentum", "rmsprop", "adam")  # notebook 10's OPTIMIZERS, nb07's BASELINES (lopt.optimizers names)
FASHION_SIZE, DIGITS_SIZE = 28, 8  # image sides: Fashion-MNIST, scikit-learn's digits
FASHION_TRAIN = 60_000 - NUM_VALID  # images in the prepared Fashion-MNIST training split (lopt.data)
THESIS_BATCH = 128  # lopt.thesis.tasks.fashion_mnist_mlp's minibatch: an epoch is num_train // 128 steps


class SchemaError(ValueError):
    """Bad values in ``params.yaml``; ``errors`` lists every problem (each names section.profile.key and the fix)."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(f"- {e}" for e in self.errors) if len(self.errors) > 1 else self.errors[0])


# ------------------------------------------------------------------------------------------- value types


@dataclass(frozen=True, eq=False)
class Rule:
    """What a value must be ("an integer >= 1") and an example; kept in the type's Annotated metadata."""

    allowed: str
    example: Any


def _reject(rule: Rule) -> NoReturn:
    raise PydanticCustomError("lopt", "must be {allowed}", {"allowed": rule.allowed, "example": rule.example})


def _fail(key: str, message: str) -> NoReturn:
    """A cross-field rule broken: the message names the values and the fix."""
    raise PydanticCustomError("lopt_rule", "{message}", {"key": key, "message": message})


def _rule(tp: Any) -> Rule:
    return next(m for m in get_args(tp)[1:] if isinstance(m, Rule))


def Int(ge: int = 1, le: int | None = None, divides: int | None = None, example: int = 10) -> Any:
    """An integer (an integral float such as 1000.0 becomes 1000; bools, strings, 50.5 are rejected)."""
    text = f"an integer dividing {divides}: " + ", ".join(str(d) for d in range(1, divides + 1) if divides % d == 0) \
        if divides else f"an integer >= {ge}" + (f" and <= {le}" if le is not None else "")
    rule = Rule(text, example)

    def check(v: Any) -> int:
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < ge or (le is not None and v > le) \
                or (divides and divides % v):
            _reject(rule)
        return v

    return Annotated[int, BeforeValidator(check), rule]


def Float(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None,
          example: float = 0.1) -> Any:
    """A finite number within the bounds (ints are accepted and returned as floats)."""
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    if low is not None and high is not None:
        text = f"a number in {'(' if gt is not None else '['}{low:g}, {high:g}{')' if lt is not None else ']'}"
    else:
        text = "a finite number" + "".join(f" {op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le))
                                           if b is not None)
    rule = Rule(text, example)

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (gt is not None and v <= gt) or (ge is not None and v < ge) \
                or (lt is not None and v >= lt) or (le is not None and v > le):
            _reject(rule)
        return float(v)

    return Annotated[float, BeforeValidator(check), rule]


def OneOf(choices: Sequence[str]) -> Any:
    """One of the names the library accepts (a Literal)."""
    choices = tuple(choices)
    rule = Rule("one of " + ", ".join(choices), choices[0])

    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in choices:
            _reject(rule)
        return v

    return Annotated[Literal[choices], BeforeValidator(check), rule]


def List(item: Any, min_length: int = 1, unique: bool = False) -> Any:
    """A list of ``item`` values (non-empty by default)."""
    inner = _rule(item)
    size = "a non-empty list" if min_length == 1 else f"a list of >= {min_length} items" if min_length else "a list"
    text = f"{size}{' without repeats' if unique else ''}, each {inner.allowed}"
    numeric = isinstance(inner.example, (int, float))
    rule = Rule(text, [inner.example * (i + 1) if numeric else inner.example for i in range(max(1, min_length))])

    def check(v: Any) -> list:
        if not isinstance(v, list) or len(v) < min_length:
            _reject(rule)
        return v

    def distinct(v: list) -> list:
        if unique and len(set(v)) != len(v):
            _reject(rule)
        return v

    return Annotated[list[item], BeforeValidator(check), AfterValidator(distinct), rule]


Count = Int(1)
Positive = Float(gt=0.0)
NonNegative = Float(ge=0.0, example=0.0)
Decay = Float(ge=0.0, lt=1.0, example=0.9)  # momentum, rmsprop decay: 0 <= x < 1
Fraction = Float(ge=0.0, le=1.0, example=0.5)
Pairs = Int(2, example=8)  # antithetic pairs / tasks of an estimator that needs a variance (Merged)
Counts = List(Count)
Hidden = List(Int(1, example=32))
FashionPool = Int(divides=FASHION_SIZE, example=4)  # average-pooling factor / pooled size of 28x28 images
TrainImages = Int(THESIS_BATCH, FASHION_TRAIN, example=48_000)


class Block(BaseModel):
    """Unknown keys are errors; values are checked by their types' own validators (strict otherwise).
    ``ordered``: pairs of keys (lo, hi) that must satisfy lo < hi."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ordered: ClassVar[tuple[tuple[str, str], ...]] = ()

    @model_validator(mode="after")
    def _ordered(self) -> "Block":
        for lo, hi in self.ordered:
            if not getattr(self, lo) < getattr(self, hi):
                _fail(lo, f"{lo} = {getattr(self, lo):g} must be < {hi} = {getattr(self, hi):g} (swap or change them)")
        return self


def _divides(key: str, divisor: int, total: int, what: str) -> None:
    if total % divisor:
        best = max(d for d in range(1, divisor + 1) if total % d == 0)
        _fail(key, f"{key} = {divisor} must divide {what} ({total}), e.g. {key}: {best}")


# ------------------------------------------------------------------------------------------- shared sub-models


class LogGrid(Block):
    """Log-spaced values: np.geomspace(lo, hi, num), e.g. {lo: 1.0e-4, hi: 10.0, num: 11}."""

    ordered = (("lo", "hi"),)
    lo: Positive
    hi: Positive
    num: Int(2, example=11)


class Axis(Block):
    """A hyperparameter axis of a random search (lopt.tuning.axis)."""

    ordered = (("lo", "hi"),)
    lo: Float()
    hi: Float()
    num: Int(2, example=31)
    scale: OneOf(SCALES)

    @model_validator(mode="after")
    def _scale(self) -> "Axis":
        if self.scale == "log" and self.lo <= 0:
            _fail("lo", f"lo = {self.lo:g}: a log-scale axis needs lo > 0")
        if self.scale == "log1m" and self.hi >= 1:
            _fail("hi", f"hi = {self.hi:g}: a log1m axis (1 - value log-spaced) needs hi < 1")
        return self


class RateAxis(Axis):
    @model_validator(mode="after")
    def _positive(self) -> "RateAxis":
        if self.lo <= 0:
            _fail("lo", f"lo = {self.lo:g}: learning rates must be > 0")
        return self


class DecayAxis(Axis):
    @model_validator(mode="after")
    def _below_one(self) -> "DecayAxis":
        if self.hi >= 1:
            _fail("hi", f"hi = {self.hi:g}: a momentum or decay rate must be < 1")
        return self


class PerSplit(Block):
    """A count per data split (lopt.tasks.SPLITS)."""

    train: Count
    valid: Count
    test: Count


assert tuple(PerSplit.model_fields) == SPLITS


class FashionMLP(Block):
    """Notebooks 02-04: an MLP on Fashion-MNIST (lopt.tasks.fashion_mnist_task)."""

    hidden: Hidden
    batch_size: Count
    max_examples: Count


class HeldOutRuns(Block):
    """Notebooks 06-07: notebook 05's optimizers and tuned baselines on held-out problems."""

    num_problems: Count
    num_inits: Count
    eval_every: Count  # must divide nb05's horizon (checked by validate_params)


class GruBlock(Block):
    """Notebooks 11-14: the GRUs notebook 10 trained, on problems of these tasks."""

    tasks: List(OneOf(GRU_TASKS), unique=True)
    num_runs: Count
    num_steps: Count


class Thesis(Block):
    """Notebooks 15-17: the coordinatewise LSTM optimizer (lopt.learned.lstm, lopt.thesis)."""

    p: Positive  # eq. 5.2's preprocessing exponent
    lstm_hidden: Hidden
    meta_learning_rate: Positive
    lr_grid: LogGrid


class ThesisMlp(Block):
    """lopt.thesis.tasks.fashion_mnist_mlp's settings."""

    num_train: TrainImages
    pool: FashionPool
    hidden: Count
    alpha: Positive  # the LSTM's output scale


def _epoch_divides(m: Any, epochs: int = 1) -> None:
    steps = (m.num_train // THESIS_BATCH) * epochs
    _divides("eval_every", m.eval_every, steps,
             f"the steps of {epochs} epoch(s) of num_train = {m.num_train} in minibatches of {THESIS_BATCH}")
