"""Classification Accuracy Score (CAS, Ravuri & Vinyals 2019): the accuracy on real held-out images of a
classifier trained only on a model's class-conditional samples.

The classifier is :class:`CASNet`, a small CNN trained from scratch by :func:`train_cas_classifier` for
a fixed number of epochs (Adam, cross-entropy, no augmentation). Training is seeded: two training sets
of the same size get the same initial weights and the same batch order, so what differs between two
scores is the data alone. On the CPU it runs on one thread, whatever the process's thread count: oneDNN
splits a convolution's weight-gradient sum across threads, so trained on 2 threads the weights (and
every score read by them) differ from those trained on 1. Trained on as many real training images per
class, the same recipe gives the real-data reference; the gap between the two is what the samples lack,
in fidelity to their class or in its variety. It is deliberately not the pipeline's noise-aware
classifier: samples steered by that classifier's gradients would then be scored by the network they were
steered to please.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import RequestError

CAS_CLASSIFIER = (
    "CASNet: 2 x (two 3x3 convolutions + ReLU, 2x2 max pool) with 32 then 64 channels, area-pooled to 4x4, "
    "a 128-unit hidden layer; Adam (lr 1e-3), batches of 64, no augmentation, trained from scratch"
)


class CASNet(nn.Module):
    """A small CNN, ``[B, C, H, W]`` (H, W >= 4, in [-1, 1]) -> logits ``[B, num_classes]``: two stages of
    two 3x3 convolutions (32, then 64 channels; ReLU) each followed by 2x2 max pooling, area-pooled to
    4x4, then a hidden layer of 128 units."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.layers(x)


def train_cas_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    description: str = "CAS classifier",
) -> CASNet:
    """A :class:`CASNet` trained for ``epochs`` on ``images [N, C, H, W]`` (in [-1, 1]) with class
    indices ``labels [N]``; initial weights and batch order come from ``seed`` alone (the global random
    state is left as it was), and on the CPU the weights do not depend on the thread count (it trains on
    one thread and restores the count)."""
    if images.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError(f"need one label per image and at least one image (got {images.shape[0]} images, {labels.shape[0]} labels)")
    if epochs < 1:
        raise RequestError(f"epochs must be at least 1, got {epochs}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CASNet(num_classes, images.shape[1])
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    order = torch.Generator().manual_seed(seed)
    with one_thread() if torch.device(device).type == "cpu" else nullcontext():
        for _ in tqdm(range(epochs), desc=description, unit="epoch", leave=False):
            for batch in torch.randperm(labels.shape[0], generator=order).split(batch_size):
                loss = F.cross_entropy(model(images[batch].float().to(device)), labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the body on one intra-op thread, restoring the thread count after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """The most likely class of each of ``images [N, C, H, W]``: LongTensor ``[N]`` (on the CPU)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        found = [model(chunk.float().to(device)).argmax(dim=1).cpu() for chunk in images.split(batch_size)]
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


@dataclass
class CASScore:
    """A classifier's accuracy on the test images and its recall per class (NaN for a class the test
    images lack)."""

    accuracy: float
    per_class: list[float]


def classification_accuracy_score(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    description: str = "CAS classifier",
) -> CASScore:
    """Train :class:`CASNet` on ``train_images [N, C, H, W]`` / ``train_labels [N]`` (see
    :func:`train_cas_classifier`) and score it on ``test_images [M, C, H, W]`` / ``test_labels [M]``.
    Generated training images give the CAS; real ones, the real-data reference."""
    if test_images.shape[0] != test_labels.shape[0] or test_labels.numel() == 0:
        raise ValueError(f"need one label per test image and at least one (got {test_images.shape[0]} images, {test_labels.shape[0]} labels)")
    model = train_cas_classifier(
        train_images, train_labels, num_classes, epochs=epochs, batch_size=batch_size, seed=seed, device=device, description=description
    )
    right = predict(model, test_images) == test_labels.cpu()
    per_class = [float(right[test_labels.cpu() == c].double().mean()) if (test_labels == c).any() else float("nan") for c in range(num_classes)]
    return CASScore(accuracy=float(right.double().mean()), per_class=per_class)
