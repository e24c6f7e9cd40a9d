"""Out-of-distribution task families for the learned optimizers (Metz et al. 2019 sec. 4.4, Fig. 7, App. F).

The paper applies its optimizers, outer-trained on 3-layer CNNs over 32x32 ImageNet classes, to "dissimilar
datasets, different numbers of units per layer, different number of layers, and even to fully connected networks":
a 6-layer CNN on 28x28 MNIST (Fig. 7) and other widths, depths and an MLP (App. F). Here, beside notebook 05's
class split of Fashion-MNIST:

- :func:`digits_splits`: scikit-learn's bundled 8x8 handwritten digits (no download; the MNIST stand-in, a data set
  the optimizers never saw), values 0-16 scaled to uint8 0-255, split into three disjoint thirds by a seeded
  permutation, in the layout of :func:`lopt.data.load_splits`;
- :class:`ResampledFamily`: a :class:`~lopt.classsplit.ClassSplitFamily` whose problems also draw their own
  ``per_class`` images of each class (without replacement) from a larger pool, so that problems over all 10
  classes differ in their images as well as in their random label order;
- :func:`build`: one family from a ``params.yaml`` entry (``data``: ``digits``, ``fashion_mnist`` or
  ``held_out``, notebook 05's held-out classes with another architecture);
- :func:`summary`: the numbers Fig. 7 is read by: median (over problems x initialisations) whole-split training and
  test loss at the start, at the end and lowest over the run.

Tasks are :class:`lopt.tasks.ImageClassifier` pytrees, so :func:`lopt.baselines.curves_with_eval` and
:func:`lopt.baselines.tuned_curves` run on them unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .baselines import Curves
from .classsplit import ClassSplitFamily, class_pool
from .tasks import SPLITS, ImageClassifier, TaskFamily

Array = jax.Array
DATA = ("digits", "fashion_mnist", "held_out")


def digits_splits(seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as uint8 images (0-16 scaled to 0-255) and uint8 labels, split into three
    disjoint parts (train / valid / test, about 600 images each) by a permutation seeded with ``seed``; keys
    ``x_train, y_train, x_valid, y_valid, x_test, y_test`` as :func:`lopt.data.load_splits`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.uint8)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(x)), len(SPLITS))
    out = {}
    for split, idx in zip(SPLITS, parts):
        out[f"x_{split}"], out[f"y_{split}"] = x[idx], y[idx]
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ResampledFamily(ClassSplitFamily):
    """k-way problems whose images are drawn per problem (module docstring): ``pool[split]`` holds
    (num_pool_classes, N_split, H, W) images; a problem takes ``num_classes`` classes in random order (the label
    permutation, as :class:`~lopt.classsplit.ClassSplitFamily`) and ``per_class[split]`` random images of each."""

    per_class: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for split, x in self.pool.items():
            n = self.per_class.get(split)
            if n is None or not 1 <= int(n) <= x.shape[1]:
                raise ValueError(f"per_class.{split} = {n}: a problem draws 1 to {x.shape[1]} images per class from "
                                 f"the pool; raise pool_per_class.{split} or lower per_class.{split}")

    def sample(self, key: Array) -> ImageClassifier:
        """A problem: classes as :meth:`ClassSplitFamily.sample` (same key, same classes and label order), then
        ``per_class[split]`` images of each class drawn without replacement from the pool."""
        k = int(self.num_classes)
        chosen = jax.random.permutation(key, len(self.classes))[:k]
        images, labels = {}, {}
        for i, (split, x) in enumerate(self.pool.items()):
            n, pool_n = int(self.per_class[split]), x.shape[1]
            keys = jax.random.split(jax.random.fold_in(key, i + 1), k)
            idx = jax.vmap(lambda kk: jax.random.permutation(kk, pool_n)[:n])(keys)  # (k, n)
            images[split] = x[chosen[:, None], idx].reshape(k * n, *x.shape[2:])
            labels[split] = jnp.repeat(jnp.arange(k, dtype=jnp.int32), n)
        return ImageClassifier(images, labels, self.model, tuple(self.hidden), self.act, int(self.batch_size),
                               k, None if self.strides is None else tuple(self.strides), self.loss_cap)


def _architecture(spec: Mapping[str, Any]) -> dict[str, Any]:
    model = spec.get("model", "cnn")
    if model not in ("cnn", "mlp"):
        raise ValueError(f"model = {model!r}: allowed values: cnn, mlp")
    hidden = tuple(int(h) for h in spec["hidden"])
    strides = spec.get("strides")
    if model == "cnn" and strides is not None and len(strides) != len(hidden):
        raise ValueError(f"strides {tuple(strides)} need one entry per conv layer of hidden {hidden}")
    return {"model": model, "hidden": hidden,
            "strides": tuple(int(s) for s in strides) if model == "cnn" and strides is not None else None}


def build(spec: Mapping[str, Any], trained: Mapping[str, Any], splits: Mapping[str, np.ndarray] | None = None,
          seed: int = 0) -> TaskFamily:
    """The family of one ``params.yaml`` entry. ``spec``: ``data`` (``digits``, ``fashion_mnist`` or
    ``held_out``), ``model`` (``cnn`` or ``mlp``), ``hidden``, ``strides`` (cnn); for ``digits`` and
    ``fashion_mnist`` also ``num_classes``, ``image_size``, ``per_class`` and ``pool_per_class`` (dicts over
    train/valid/test). ``trained``: notebook 05's task settings (the ``task`` meta of the saved optimizers:
    ``test_classes``, ``num_classes``, ``per_class``, ``image_size``, ``batch_size``, ``loss_cap_factor``);
    ``held_out`` problems are exactly its held-out problems, with this architecture. ``splits``: Fashion-MNIST's
    arrays (:func:`lopt.data.load_splits`, loaded when needed and not given); ``seed``: the digits split."""
    data = spec.get("data")
    if data not in DATA:
        raise ValueError(f"data = {data!r}: allowed values: {', '.join(DATA)}")
    task = {**_architecture(spec), "batch_size": int(trained["batch_size"]),
            "loss_cap_factor": trained.get("loss_cap_factor")}
    if data == "held_out":
        classes = tuple(int(c) for c in trained["test_classes"])
        if splits is None:
            from . import data as data_mod

            splits = data_mod.load_splits()
        pool = class_pool(splits, classes, trained["per_class"], int(trained["image_size"]))
        return ClassSplitFamily(pool, classes, int(trained["num_classes"]), **task)
    for key in ("num_classes", "image_size", "per_class", "pool_per_class"):
        if key not in spec:
            raise ValueError(f"data = {data!r} needs {key!r} in the task's entry (e.g. per_class: "
                             "{train: 32, valid: 32, test: 32})")
    if data == "digits":
        splits = digits_splits(seed)
    elif splits is None:
        from . import data as data_mod

        splits = data_mod.load_splits()
    classes = tuple(range(10))
    pool = class_pool(splits, classes, spec["pool_per_class"], int(spec["image_size"]))
    return ResampledFamily(pool, classes, int(spec["num_classes"]), per_class=dict(spec["per_class"]), **task)


def summary(train: Curves, test: Curves) -> dict[str, float]:
    """Median over problems x initialisations of the whole-training-split loss of ``train`` and the test loss of
    ``test`` (the same curves for a learned optimizer; a baseline's curves tuned on training and on validation
    loss, as Fig. 6-7 plot them): ``initial_*``, ``final_*`` and ``lowest_*`` (the minimum of the median curve)."""
    out = {}
    for name, cur, split in (("train", train, "train"), ("test", test, "test")):
        med = np.median(cur.split[split].reshape(-1, cur.steps.size), axis=0)
        out |= {f"initial_{name}": float(med[0]), f"final_{name}": float(med[-1]), f"lowest_{name}": float(np.min(med))}
    return out
