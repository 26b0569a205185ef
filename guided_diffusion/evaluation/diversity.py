"""How varied a set of labels is: the normalised entropy of their empirical distribution."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def normalized_entropy(values: Sequence[str], classes: Sequence[str]) -> float:
    """Entropy of the empirical distribution of ``values`` over ``classes``, divided by log(K): 1 is
    uniform, 0 a single class."""
    counts = Counter(values)
    p = np.array([counts[c] for c in classes], dtype=np.float64) / max(len(values), 1)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(classes)))
