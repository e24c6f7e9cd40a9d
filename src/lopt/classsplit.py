"""Class-split image task families (Metz et al. 2019 sec. 4.2).

The paper splits ImageNet's classes into 700 outer-training and 300 held-out classes and samples
10-class problems from either side, "using all images from each class", so that a learned optimizer
learns problem structure (CNNs trained on object classification) but cannot memorise class-specific
weights. Here the same design over Fashion-MNIST's 10 classes: :func:`class_split` builds two
:class:`ClassSplitFamily` objects, one over ``train_classes`` and one over the disjoint
``test_classes``. A task draws ``num_classes`` (k) classes of its side at random; their random order
is the label permutation. Each task has its own small train / validation / test split
(``per_class`` images per class from the data set's own splits), small enough that a CNN can
overfit it, so that optimizers outer-trained against training and against validation loss can
differ (Fig. 6a vs 6b). Images are average-pooled to ``image_size`` (28 -> 14 at cpu scale).

Inner losses recorded by outer-objectives are capped at ``loss_cap_factor * ln k`` (the loss of a
uniform guess is ln k), so one diverging inner run cannot dominate an estimate.

Tasks are :class:`lopt.tasks.ImageClassifier` pytrees, so ``jax.vmap(family.sample)`` and vmapped
unrolls over tasks work as for every other family.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .tasks import SPLITS, ImageClassifier, TaskFamily

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSplitFamily(TaskFamily):
    """k-way problems over a pool of classes (module docstring).

    ``pool[split]`` holds the images of every class of the pool, shape (num_pool_classes, n_split,
    H, W) uint8; ``classes`` their original labels (for reference only)."""

    pool: Mapping[str, Array]
    classes: tuple[int, ...]
    num_classes: int = 3
    model: str = "cnn"
    hidden: tuple[int, ...] = (16, 16, 16)
    strides: tuple[int, ...] | None = None
    act: str = "relu"
    batch_size: int = 32
    loss_cap_factor: float | None = 1.5

    def __post_init__(self) -> None:
        if not 2 <= int(self.num_classes) <= len(self.classes):
            raise ValueError(
                f"num_classes = {self.num_classes}: a task needs 2 <= k <= {len(self.classes)} "
                f"(the number of classes of this side of the split, {list(self.classes)})"
            )
        if self.strides is not None and self.model == "cnn" and len(self.strides) != len(self.hidden):
            raise ValueError(f"strides {tuple(self.strides)} need one entry per conv layer of hidden {tuple(self.hidden)}")

    @property
    def loss_cap(self) -> float | None:
        return None if self.loss_cap_factor is None else float(self.loss_cap_factor * math.log(self.num_classes))

    def sample(self, key: Array) -> ImageClassifier:
        """A task of ``num_classes`` classes drawn without replacement; label i is the i-th drawn class."""
        k = int(self.num_classes)
        chosen = jax.random.permutation(key, len(self.classes))[:k]
        images, labels = {}, {}
        for split, x in self.pool.items():
            n = x.shape[1]
            images[split] = x[chosen].reshape(k * n, *x.shape[2:])
            labels[split] = jnp.repeat(jnp.arange(k, dtype=jnp.int32), n)
        return ImageClassifier(images, labels, self.model, tuple(self.hidden), self.act, int(self.batch_size),
                               k, None if self.strides is None else tuple(self.strides), self.loss_cap)

    def task_classes(self, key: Array) -> list[int]:
        """The original class labels of the task :meth:`sample` draws with ``key`` (label order)."""
        chosen = np.asarray(jax.random.permutation(key, len(self.classes))[: int(self.num_classes)])
        return [self.classes[i] for i in chosen]


def pool_images(x: np.ndarray, size: int) -> np.ndarray:
    """Average-pool square uint8 images (N, H, H) to (N, size, size); ``size`` must divide H."""
    h = x.shape[1]
    if size < 1 or h % size:
        raise ValueError(f"image_size = {size} must divide the image size {h} (e.g. 28, 14 or 7)")
    f = h // size
    y = x.reshape(x.shape[0], size, f, size, f).astype(np.float32).mean(axis=(2, 4))
    return np.round(y).astype(np.uint8)


def class_pool(
    splits: Mapping[str, np.ndarray], classes: Sequence[int], per_class: Mapping[str, int], image_size: int
) -> dict[str, Array]:
    """For each split, the first ``per_class[split]`` images of each class (data set order, which is
    seeded-shuffled), pooled to ``image_size``: (len(classes), n, size, size) uint8."""
    out = {}
    for split in SPLITS:
        x, y = np.asarray(splits[f"x_{split}"]), np.asarray(splits[f"y_{split}"])
        n = int(per_class[split])
        rows = []
        for c in classes:
            idx = np.flatnonzero(y == c)
            if idx.size < n:
                raise ValueError(f"class {c} has only {idx.size} {split} images; lower per_class.{split} (asked {n})")
            rows.append(pool_images(x[idx[:n]], image_size))
        out[split] = jnp.asarray(np.stack(rows))
    return out


def class_split(
    train_classes: Sequence[int],
    test_classes: Sequence[int],
    num_classes: int = 3,
    per_class: Mapping[str, int] | None = None,
    image_size: int = 14,
    splits: Mapping[str, np.ndarray] | None = None,
    **task: object,
) -> tuple[ClassSplitFamily, ClassSplitFamily]:
    """The outer-training and held-out families of a class split of Fashion-MNIST (``splits``: the
    arrays of :func:`lopt.data.load_splits`, loaded when not given). ``task`` goes to both families
    (``model``, ``hidden``, ``strides``, ``act``, ``batch_size``, ``loss_cap_factor``)."""
    train_classes, test_classes = tuple(int(c) for c in train_classes), tuple(int(c) for c in test_classes)
    overlap = set(train_classes) & set(test_classes)
    if overlap:
        raise ValueError(f"classes {sorted(overlap)} are on both sides of the split: held-out classes must be unseen")
    bad = [c for c in train_classes + test_classes if not 0 <= c <= 9]
    if bad:
        raise ValueError(f"Fashion-MNIST classes are 0-9, got {bad}")
    per_class = dict(per_class or {"train": 64, "valid": 64, "test": 64})
    missing = [s for s in SPLITS if s not in per_class]
    if missing:
        raise ValueError(f"per_class needs a count for every split {SPLITS}; missing {missing}")
    if splits is None:
        from . import data

        splits = data.load_splits()
    return tuple(
        ClassSplitFamily(class_pool(splits, cls, per_class, image_size), cls, int(num_classes), **task)
        for cls in (train_classes, test_classes)
    )
