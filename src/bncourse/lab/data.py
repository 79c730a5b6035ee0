"""Data sets made by code or shipped inside a package: nothing is downloaded at run time."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .device import shifted


@dataclass
class Split:
    """A train/test split of features ``x`` (float) and integer labels or targets ``y``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> "Split":
        return Split(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def digits(test_fraction: float = 0.25, seed: int = 0, device=None) -> Split:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 64 pixels in 0..16, 10 classes).

    Shuffled with ``seed`` and split, stratified by class. Pixels are left unscaled (0..16): the
    chapters scale them when they mean to, with statistics of the training split only.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=shifted(seed), stratify=y
    )
    split = Split(
        torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.long),
        torch.tensor(x_te, dtype=torch.float32), torch.tensor(y_te, dtype=torch.long),
    )
    return split.to(device) if device is not None else split


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True, drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``(x, y)``, reshuffled each call when ``shuffle``.

    ``drop_last`` skips a final short batch (a batch of 1 cannot be batch-normalized in training).
    """
    n = x.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
    else:
        order = torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]
