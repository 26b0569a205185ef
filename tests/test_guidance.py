"""Classifier-free guidance batching and the classifier-guidance gradient."""

import pytest
import torch

from guided_diffusion import GaussianDiffusion, get_beta_schedule
from guided_diffusion.guidance import ClassifierFreeGuidance, classifier_cond_fn, resolve_labels

F64 = torch.float64


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, text_features):
        self.calls.append(x.shape[0])
        return torch.tanh(x) * text_features.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1).to(x.dtype) / 100


def test_classifier_free_guidance_batches_both_inputs_in_one_forward():
    model = CountingModel()
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    t = torch.tensor([5, 9, 11])
    cond = {"text_features": torch.randn(3, 7, 8, dtype=F64)}
    uncond = {"text_features": torch.randn(3, 7, 8, dtype=F64)}
    guided = ClassifierFreeGuidance(model, 4.0, uncond)(x, t, **cond)
    assert model.calls == [6]
    c, u = model(x, t, **cond), model(x, t, **uncond)
    torch.testing.assert_close(guided, u + 4.0 * (c - u))
    model.calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, uncond)(x, t, **cond), c)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, uncond)(x, t, **cond), u)
    assert model.calls == [3, 3]


class TinyClassifier(torch.nn.Module):
    labels = {"shape": ["circle", "square", "triangle"], "color": ["red", "blue"]}

    def __init__(self):
        super().__init__()
        self.shape = torch.nn.Linear(12, 3).double()
        self.color = torch.nn.Linear(12, 2).double()

    def forward(self, x, t):
        h = torch.sin(x.flatten(1)) * (1 + t.view(-1, 1).to(x.dtype) / 10)
        return {"shape": self.shape(h), "color": self.color(h ** 2)}


def test_classifier_gradient_is_the_gradient_of_the_log_probability():
    clf = TinyClassifier()
    x = torch.randn(4, 3, 2, 2, dtype=F64)
    t = torch.tensor([0, 10, 20, 30])
    labels = resolve_labels(clf.labels, {"shape": "square", "color": ["red", "blue", "blue", "red"]}, 4, "cpu")
    grad = classifier_cond_fn(clf, labels, scale=2.5)(x, t, text_features=None)
    for i in range(4):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logits = clf(xi, t[i : i + 1])
        log_p = torch.log_softmax(logits["shape"], -1)[0, 1] + torch.log_softmax(logits["color"], -1)[0, labels["color"][i]]
        (expected,) = torch.autograd.grad(log_p, xi)
        torch.testing.assert_close(grad[i : i + 1], 2.5 * expected)
    assert not x.requires_grad


def test_max_t_zeroes_the_gradient_above_it_and_keeps_it_below():
    clf = TinyClassifier()
    x = torch.randn(4, 3, 2, 2, dtype=F64)
    t = torch.tensor([0, 10, 20, 30])
    labels = resolve_labels(clf.labels, {"shape": "square"}, 4, "cpu")
    full = classifier_cond_fn(clf, labels, scale=2.0)(x, t)
    late = classifier_cond_fn(clf, labels, scale=2.0, max_t=10)(x, t)
    torch.testing.assert_close(late[:2], full[:2])
    assert torch.all(late[2:] == 0) and torch.all(full[2:] != 0)
    calls = []
    counting = lambda x, t: calls.append(t) or clf(x, t)  # noqa: E731
    unguided = classifier_cond_fn(counting, labels, scale=2.0, max_t=10)(x, torch.tensor([20, 20, 30, 30]))
    assert torch.all(unguided == 0) and calls == []


def test_guided_ancestral_mean_is_mean_plus_variance_times_gradient():
    d = GaussianDiffusion(get_beta_schedule("cosine", 50))
    clf = TinyClassifier()
    model = lambda x, t: 0.2 * x  # noqa: E731
    x = torch.randn(2, 3, 2, 2, dtype=F64)
    t = torch.tensor([10, 40])
    cond_fn = classifier_cond_fn(clf, resolve_labels(clf.labels, {"shape": 2}, 2, "cpu"), scale=3.0)
    noise = torch.randn_like(x)
    out = d.p_mean_variance(model, x, t)
    step = d.p_sample(model, x, t, cond_fn=cond_fn, noise=noise)
    expected = out["mean"] + out["variance"] * cond_fn(x, t) + (0.5 * out["log_variance"]).exp() * noise
    torch.testing.assert_close(step["sample"], expected)


def test_bad_labels_are_refused_with_the_valid_ones():
    names = TinyClassifier.labels
    with pytest.raises(ValueError, match="valid attributes: shape, color"):
        resolve_labels(names, {"size": "large"}, 1, "cpu")
    with pytest.raises(ValueError, match="valid: circle, square, triangle"):
        resolve_labels(names, {"shape": "hexagon"}, 1, "cpu")
    with pytest.raises(ValueError, match="out of range 0..1"):
        resolve_labels(names, {"color": 2}, 1, "cpu")
    with pytest.raises(ValueError, match="expected 3"):
        resolve_labels(names, {"color": ["red"]}, 3, "cpu")
