"""Evaluation that works on any dataset: prompt fidelity by retrieval and the Classification Accuracy
Score (and, in the modules beside it, each metric of ``gd-eval``; :mod:`.generic` runs them all on any
captioned dataset)."""

from guided_diffusion.evaluation.attribute_judge import AttributeJudge, train_attribute_judge
from guided_diffusion.evaluation.cas import CASNet, CASScore, classification_accuracy_score, train_cas_classifier
from guided_diffusion.evaluation.retrieval import RetrievalResult, nearest, pixel_features, retrieval_fidelity

__all__ = [
    "AttributeJudge",
    "CASNet",
    "CASScore",
    "RetrievalResult",
    "classification_accuracy_score",
    "nearest",
    "pixel_features",
    "retrieval_fidelity",
    "train_attribute_judge",
    "train_cas_classifier",
]
