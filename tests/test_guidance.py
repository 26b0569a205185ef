"""Classifier-free guidance batching, autoguidance, guidance intervals, CADS and the classifier-guidance gradient."""

import pytest
import torch

from guided_diffusion import GaussianDiffusion
from guided_diffusion.schedule import get_beta_schedule
from guided_diffusion.guidance import (
    CADS,
    ClassifierFreeGuidance,
    ConditionAnnealing,
    check_interval,
    classifier_cond_fn,
    clip_cond_fn,
    resolve_labels,
)

F64 = torch.float64


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, text_features):
        self.calls.append(x.shape[0])
        return torch.tanh(x) * text_features.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1).to(x.dtype) / 100


def guidance_inputs(t: list[float]) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    """x [3, 2, 4, 4], the timesteps ``t`` [3], and conditional and unconditional text features."""
    features = torch.randn(2, 3, 7, 8, dtype=F64)
    return torch.randn(3, 2, 4, 4, dtype=F64), torch.tensor(t), {"text_features": features[0]}, {"text_features": features[1]}


def test_classifier_free_guidance_batches_both_inputs_in_one_forward():
    model = CountingModel()
    x, t, cond, uncond = guidance_inputs([5, 9, 11])
    guided = ClassifierFreeGuidance(model, 4.0, uncond)(x, t, **cond)
    assert model.calls == [6]
    c, u = model(x, t, **cond), model(x, t, **uncond)
    torch.testing.assert_close(guided, u + 4.0 * (c - u))
    model.calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, uncond)(x, t, **cond), c)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, uncond)(x, t, **cond), u)
    assert model.calls == [3, 3]


def test_a_guidance_interval_guides_the_rows_inside_it_and_leaves_the_others_conditional():
    model = CountingModel()
    x, t, cond, uncond = guidance_inputs([5.0, 9.5, 11.0])
    c, u = model(x, t, **cond), model(x, t, **uncond)
    model.calls.clear()
    guided = ClassifierFreeGuidance(model, 4.0, uncond, interval=(9.5, 20))(x, t, **cond)
    torch.testing.assert_close(guided[0], c[0])
    torch.testing.assert_close(guided[1:], (u + 4.0 * (c - u))[1:])  # both ends inclusive
    outside = ClassifierFreeGuidance(model, 4.0, uncond, interval=(20, 30))(x, t, **cond)
    torch.testing.assert_close(outside, c)
    assert model.calls == [6, 3]  # outside the interval: the conditional forward alone


def test_autoguidance_mixes_the_model_with_its_weaker_guide_on_the_same_prompt():
    model, weak = CountingModel(), CountingModel()
    x = torch.randn(2, 2, 4, 4, dtype=F64)
    t = torch.tensor([3, 8])
    cond = {"text_features": torch.randn(2, 7, 8, dtype=F64)}
    weak_cond = {"text_features": torch.randn(2, 7, 8, dtype=F64)}  # the guide's own text encoder's features
    guided = ClassifierFreeGuidance(model, 2.5, weak_cond, guide_model=lambda x, t, **kw: 0.5 * weak(x, t, **kw))(x, t, **cond)
    strong, poor = model(x, t, **cond), 0.5 * weak(x, t, **weak_cond)
    torch.testing.assert_close(guided, poor + 2.5 * (strong - poor))
    assert model.calls == [2, 2] and weak.calls == [2, 2]


def test_cads_anneals_the_condition_from_pure_noise_to_the_condition():
    cads = CADS(tau1=0.6, tau2=0.9, noise_scale=0.25, psi=1.0)
    torch.testing.assert_close(cads.gamma(torch.tensor([0.0, 0.6, 0.75, 0.9, 1.0], dtype=F64)), torch.tensor([1, 1, 0.5, 0, 0], dtype=F64))
    features = torch.randn(3, 5, 4, dtype=F64) * 2 + 1
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    t = torch.tensor([0.0, 749.25, 999.0])  # T = 1000: tau = t / 999 is 0, 0.75 and 1

    def annealed(psi, seed):
        return ConditionAnnealing(None, CADS(0.6, 0.9, 0.25, psi), 1000, torch.Generator().manual_seed(seed)).anneal(features, mask, t)

    noise = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    raw = annealed(0.0, 7)
    torch.testing.assert_close(raw[0], features[0])  # gamma 1: the condition itself
    generator = torch.Generator().manual_seed(3)
    untouched = ConditionAnnealing(None, cads, 1000, generator).anneal(features, mask, torch.tensor([0.0, 100.0, 599.0]))
    assert untouched is features and torch.equal(generator.get_state(), torch.Generator().manual_seed(3).get_state())
    torch.testing.assert_close(raw[1], 0.5**0.5 * features[1] + 0.25 * 0.5**0.5 * noise[1])
    torch.testing.assert_close(raw[2], 0.25 * noise[2])  # gamma 0: noise alone
    rescaled = annealed(1.0, 7)
    for i, n in enumerate(mask.sum(1).tolist()):
        kept, noised = features[i][mask[i]], raw[i][mask[i]]
        expected = (noised - noised.mean()) / noised.std(unbiased=False) * kept.std(unbiased=False) + kept.mean()
        torch.testing.assert_close(rescaled[i][mask[i]], expected)  # the real tokens' mean and spread
    with pytest.raises(ValueError, match="tau1 < tau2"):
        CADS(tau1=0.9, tau2=0.6)
    with pytest.raises(ValueError, match="psi in"):
        CADS(psi=2.0)


def test_intervals_are_checked():
    assert check_interval("guidance_interval", None, 100) is None
    assert check_interval("guidance_interval", [10, 20.5], 100) == (10.0, 20.5)
    with pytest.raises(ValueError, match=r"guidance_interval must satisfy 0 <= t_low <= t_high <= 99, got \(30, 20\)"):
        check_interval("guidance_interval", (30, 20), 100)
    with pytest.raises(ValueError, match="classifier_interval must be a pair"):
        check_interval("classifier_interval", (1, 2, 3), 100)
    with pytest.raises(ValueError, match="<= 99"):
        check_interval("classifier_interval", (0, 100), 100)


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
    torch.testing.assert_close(classifier_cond_fn(clf, labels, scale=2.0, interval=(0, 10))(x, t), late)
    middle = classifier_cond_fn(clf, labels, scale=2.0, interval=(5, 25))(x, t)
    torch.testing.assert_close(middle[1:3], full[1:3])
    assert torch.all(middle[0] == 0) and torch.all(middle[3] == 0)
    with pytest.raises(ValueError, match="either max_t or interval"):
        classifier_cond_fn(clf, labels, scale=2.0, max_t=10, interval=(0, 10))


def test_classifier_guidance_takes_class_names_as_well_as_indices():
    clf = TinyClassifier()
    x = torch.randn(2, 3, 2, 2, dtype=F64)
    t = torch.tensor([4, 9])
    by_index = classifier_cond_fn(clf, resolve_labels(clf.labels, {"shape": 1, "color": [0, 1]}, 2, "cpu"), scale=1.5)(x, t)
    torch.testing.assert_close(classifier_cond_fn(clf, {"shape": "square", "color": ["red", "blue"]}, scale=1.5)(x, t), by_index)
    torch.testing.assert_close(classifier_cond_fn(clf, {"shape": 1, "color": ["red", 1]}, scale=1.5)(x, t), by_index)
    with pytest.raises(ValueError, match="valid: circle, square, triangle"):
        classifier_cond_fn(clf, {"shape": "hexagon"}, scale=1.5)(x, t)


def test_guidance_reading_x0_is_the_gradient_through_the_denoiser():
    """With a denoiser x0_hat = A x_t (a linear model), the hook is scale * A * grad log p(y | x0_hat, 0):
    the classifier reads the estimate as a clean image, and the model's kwargs reach the denoiser."""
    clf = TinyClassifier()
    read_at = []
    recording = lambda x, t: read_at.append(t) or clf(x, t)  # noqa: E731
    recording.labels = clf.labels
    seen_kwargs = []

    def denoiser(x_t, t, **model_kwargs):
        seen_kwargs.append(model_kwargs)
        return 0.7 * x_t

    x = torch.randn(4, 3, 2, 2, dtype=F64)
    t = torch.tensor([0, 10, 20, 30])
    labels = resolve_labels(clf.labels, {"shape": "triangle", "color": "blue"}, 4, "cpu")
    grad = classifier_cond_fn(recording, labels, scale=2.5, denoiser=denoiser, interval=(5, 25))(x, t, text_features="F")
    assert seen_kwargs == [{"text_features": "F"}] and torch.equal(read_at[0], torch.zeros(4, dtype=torch.long))
    for i in (1, 2):
        x0 = (0.7 * x[i : i + 1]).requires_grad_(True)
        logits = clf(x0, torch.zeros(1, dtype=torch.long))
        log_p = torch.log_softmax(logits["shape"], -1)[0, 2] + torch.log_softmax(logits["color"], -1)[0, 1]
        (expected,) = torch.autograd.grad(log_p, x0)
        torch.testing.assert_close(grad[i : i + 1], 2.5 * 0.7 * expected)
    assert torch.all(grad[0] == 0) and torch.all(grad[3] == 0)  # outside the interval


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "heun"])
def test_guidance_reading_the_samplers_own_estimate_shares_its_forward(sampler):
    """A hook whose denoiser is a ModelEstimate of the very model the sampler calls gets that call's
    output with its graph: the samples are those of a separate denoiser, with one model forward per
    evaluation instead of two. A sum of hooks shares the one forward too, a hook outside its interval
    costs no graph, and any other model (here, the estimate of a copy) keeps its own forward."""
    from guided_diffusion.guidance import GuidanceSum, ModelEstimate
    from guided_diffusion.samplers import model_evaluations, sample

    torch.manual_seed(0)
    clip = tiny_clip()
    weights = torch.randn(3, 3, dtype=F64) / 3
    calls = []

    def model(x_t, t, text_features):
        calls.append(torch.is_grad_enabled())
        return torch.tanh(torch.einsum("oc,bchw->bohw", weights, x_t)) * text_features + t.view(-1, 1, 1, 1).to(x_t.dtype) / 2000

    d = GaussianDiffusion(get_beta_schedule("linear", 1000), prediction="v")
    prompts = ["a red circle", "a blue square"]
    separate = lambda x_t, t, **kw: d.estimate_x0(model, x_t, t, kw)  # noqa: E731: the same numbers, its own forward
    noise = torch.randn(2, 3, 16, 16, dtype=F64)
    steps, kwargs = 4, {"text_features": torch.full((2, 1, 1, 1), 0.8, dtype=F64)}

    def run(*hooks):
        calls.clear()
        cond_fn = hooks[0] if len(hooks) == 1 else GuidanceSum(hooks)
        return sample(model, d, (2, 3, 16, 16), sampler=sampler, steps=steps, model_kwargs=kwargs, cond_fn=cond_fn,
                      noise=noise, dtype=F64, generator=torch.Generator().manual_seed(1))

    evaluations = model_evaluations(sampler, steps)
    own = run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=ModelEstimate(d, model)))
    assert calls == [True] * evaluations  # one forward per evaluation, with its graph
    apart = run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=separate))
    assert calls == [False, True] * evaluations
    torch.testing.assert_close(own, apart, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(own, run(clip_cond_fn(clip, prompts, scale=0.0, denoiser=separate)))  # the guidance acts

    both = run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=ModelEstimate(d, model)),
               clip_cond_fn(clip, prompts[::-1], scale=10.0, denoiser=ModelEstimate(d, model)))
    assert calls == [True] * evaluations
    torch.testing.assert_close(both, run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=separate),
                                         clip_cond_fn(clip, prompts[::-1], scale=10.0, denoiser=separate)), rtol=1e-12, atol=1e-12)
    mixed = run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=ModelEstimate(d, model)), clip_cond_fn(clip, prompts[::-1], scale=10.0))
    torch.testing.assert_close(mixed, run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=separate), clip_cond_fn(clip, prompts[::-1], scale=10.0)),
                               rtol=1e-12, atol=1e-12)

    never = run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=ModelEstimate(d, model), interval=(1, 2)))
    assert calls == [False] * evaluations and torch.equal(never, run(clip_cond_fn(clip, prompts, scale=0.0)))
    copy = lambda x_t, t, **kw: model(x_t, t, **kw)  # noqa: E731
    other = run(clip_cond_fn(clip, prompts, scale=30.0, denoiser=ModelEstimate(d, copy)))
    assert calls == [False, True] * evaluations
    torch.testing.assert_close(other, own, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_the_x0_estimate_at_any_timestep_is_the_denoisers(prediction):
    """estimate_x0 at original timesteps (fractional ones too) gives the x_0 of ``denoise`` at the noise
    level those timesteps stand for, on the full and on a respaced process; timestep_to_sigma inverts
    model_timesteps(sigma_to_timestep(sigma))."""
    model = lambda x_t, t: 0.3 * x_t + t.view(-1, 1, 1, 1).to(x_t.dtype) / 1000  # noqa: E731
    full = GaussianDiffusion(get_beta_schedule("linear", 1000), prediction=prediction)
    for d in (full, full.respace(10)):
        for sigma in (0.05, 1.3, 40.0):
            t = d.model_timesteps(d.sigma_to_timestep(sigma), 2, "cpu")
            assert t.dtype == torch.float32 or d is not full  # a level between two steps
            torch.testing.assert_close(d.timestep_to_sigma(t), torch.full((2,), sigma, dtype=F64), rtol=1e-6, atol=0)
            x = torch.randn(2, 3, 4, 4, dtype=F64) * (1 + sigma)
            x_t = x / (1 + sigma**2) ** 0.5
            torch.testing.assert_close(d.estimate_x0(model, x_t, t), d.denoise(model, x, sigma).x0)
    whole = full.model_timesteps(300.0, 2, "cpu")
    assert whole.dtype == torch.long and torch.allclose(full.timestep_to_sigma(whole), full.sigmas[300].double())


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


def tiny_clip():
    from guided_diffusion.models.clip import CLIPConfig, NoiseAwareCLIP

    torch.manual_seed(0)
    text = {"backend": "open_clip", "context_length": 16, "width": 32, "heads": 2, "layers": 1}
    config = CLIPConfig(image_size=16, embed_dim=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_heads=2, text_encoder=text)
    clip = NoiseAwareCLIP(config).double().eval()
    with torch.no_grad():
        for p in clip.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return clip


def test_clip_guidance_is_the_gradient_of_the_image_text_logit_and_enters_the_mean_like_a_classifier():
    clip = tiny_clip()
    prompts = ["a red circle", "a blue square", "a red circle"]
    x = torch.randn(3, 3, 16, 16, dtype=F64)
    t = torch.tensor([10, 400, 900])
    grad = clip_cond_fn(clip, prompts, scale=4.0)(x, t)
    for i, prompt in enumerate(prompts):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logit = clip.logits(xi, t[i : i + 1], [prompt])[0, 0]
        (expected,) = torch.autograd.grad(logit, xi)
        torch.testing.assert_close(grad[i : i + 1], 4.0 * expected)
    late = clip_cond_fn(clip, prompts, scale=4.0, interval=(0, 500))(x, t)
    torch.testing.assert_close(late[:2], grad[:2])
    assert torch.all(late[2] == 0)

    d = GaussianDiffusion(get_beta_schedule("linear", 1000))
    model = lambda x, t: 0.2 * x  # noqa: E731
    cond_fn = clip_cond_fn(clip, prompts, scale=4.0)
    noise = torch.randn_like(x)
    out = d.p_mean_variance(model, x, t)
    step = d.p_sample(model, x, t, cond_fn=cond_fn, noise=noise)
    expected = out["mean"] + out["variance"] * cond_fn(x, t) + (0.5 * out["log_variance"]).exp() * noise
    torch.testing.assert_close(step["sample"], expected)
    with pytest.raises(ValueError, match="3 prompts for a batch of 2 images"):
        cond_fn(x[:2], t[:2])


def test_clip_guidance_with_negatives_is_the_gradient_of_the_log_softmax_over_prompt_and_negatives():
    clip = tiny_clip()
    prompts = ["a red circle", "a blue square", "a red circle"]
    negatives = ["a blue square", "a green triangle", "a red square"]
    x = torch.randn(3, 3, 16, 16, dtype=F64)
    t = torch.tensor([10, 400, 900])
    grad = clip_cond_fn(clip, prompts, scale=4.0, negatives=negatives)(x, t)
    for i, prompt in enumerate(prompts):
        candidates = [prompt, *(n for n in negatives if n != prompt)]  # image 1's own caption is not its negative
        xi = x[i : i + 1].clone().requires_grad_(True)
        logits = clip.logits(xi, t[i : i + 1], candidates)[0]  # [K]
        (expected,) = torch.autograd.grad(torch.log_softmax(logits, dim=0)[0], xi, retain_graph=True)
        torch.testing.assert_close(grad[i : i + 1], 4.0 * expected)
        # closed form: the prompt's logit gradient minus the softmax-weighted mean of all candidates'
        grads = torch.stack([torch.autograd.grad(logits[k], xi, retain_graph=True)[0] for k in range(len(candidates))])
        weights = torch.softmax(logits.detach(), dim=0).view(-1, 1, 1, 1, 1)
        torch.testing.assert_close(grad[i : i + 1], 4.0 * (grads[0] - (weights * grads).sum(dim=0)))
    assert len(candidates) == 4 and not torch.equal(grad, clip_cond_fn(clip, prompts, scale=4.0)(x, t))
    torch.testing.assert_close(clip_cond_fn(clip, prompts, scale=4.0, negatives=[])(x, t), clip_cond_fn(clip, prompts, scale=4.0)(x, t))
    only_itself = clip_cond_fn(clip, ["a red circle"], scale=4.0, negatives=["a red circle"])(x[:1], t[:1])
    assert torch.all(only_itself == 0)  # a softmax over one candidate: log 1, no gradient
    late = clip_cond_fn(clip, prompts, scale=4.0, interval=(0, 500), negatives=negatives)(x, t)
    torch.testing.assert_close(late[:2], grad[:2])
    assert torch.all(late[2] == 0)


# ------------------------------------------------------------------------------------ in the pipeline


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    from guided_diffusion import GuidedDiffusionPipeline

    return GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


def sampled(pipe, **kwargs):
    return pipe(["a red circle", "a blue square"], num_inference_steps=4, sampler="ddim", guidance_scale=3.0, seed=0, output_type="pt", **kwargs).images


def test_the_pipeline_takes_intervals_autoguidance_and_cads(pipe):
    plain = sampled(pipe)
    last = pipe.diffusion.num_timesteps - 1
    assert torch.equal(sampled(pipe, guidance_interval=(0, last)), plain)
    assert not torch.equal(sampled(pipe, guidance_interval=(0, last // 2)), plain)
    conditional = pipe(
        ["a red circle", "a blue square"], num_inference_steps=4, sampler="ddim", guidance_scale=1.0, seed=0, output_type="pt"
    ).images
    torch.testing.assert_close(sampled(pipe, autoguidance=pipe), conditional)  # guided by itself: no guidance
    annealed = sampled(pipe, cads=True)
    assert torch.equal(annealed, sampled(pipe, cads={"tau1": 0.6}))  # the same seed, the same noise
    assert not torch.equal(annealed, plain)


def test_bad_guidance_settings_are_refused(pipe):
    from guided_diffusion import GuidedDiffusionPipeline

    with pytest.raises(ValueError, match="guidance_interval must satisfy"):
        sampled(pipe, guidance_interval=(500, 100))
    with pytest.raises(ValueError, match="unknown CADS setting 'tau3'; valid: tau1, tau2, noise_scale, psi"):
        sampled(pipe, cads={"tau3": 0.1})
    with pytest.raises(ValueError, match="cads must be True"):
        sampled(pipe, cads="yes")
    other = GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, {**pipe.diffusion_config, "prediction": "x0"}, pipe.sampling_config)
    with pytest.raises(ValueError, match="same diffusion prediction"):
        sampled(pipe, autoguidance=other)
    with pytest.raises(ValueError, match="must be a GuidedDiffusionPipeline"):
        sampled(pipe, autoguidance=pipe.unet)


def test_a_pipeline_guides_any_prompt_with_its_clip_and_saves_and_loads_it(pipe, tmp_path):
    from guided_diffusion import GuidedDiffusionPipeline
    from guided_diffusion.serialization import CheckpointError

    with pytest.raises(ValueError, match="needs a pipeline with a noise-aware CLIP"):
        sampled(pipe, clip_guidance_scale=5.0)
    with_clip = GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, pipe.diffusion_config, pipe.sampling_config, clip=tiny_clip().float())
    plain = sampled(with_clip)
    assert torch.equal(sampled(with_clip, clip_guidance_scale=0.0), plain)
    steered = sampled(with_clip, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle")
    assert not torch.equal(steered, plain)
    assert not torch.equal(steered, sampled(with_clip, clip_guidance_scale=50.0))  # default: each image's own prompt
    late = sampled(with_clip, clip_guidance_scale=50.0, clip_guidance_prompt=["a green triangle", "a red circle"], clip_guidance_interval=(0, 10))
    assert not torch.equal(late, steered)
    with pytest.raises(ValueError, match="one string per prompt \\(2\\)"):
        sampled(with_clip, clip_guidance_scale=5.0, clip_guidance_prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match="clip_guidance_scale must be at least 0"):
        sampled(with_clip, clip_guidance_scale=-1.0)
    away = sampled(with_clip, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle", clip_guidance_negative_prompt=["a red triangle", "a green square"])
    assert not torch.equal(away, steered)
    assert torch.equal(sampled(with_clip, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle", clip_guidance_negative_prompt=[]), steered)
    assert torch.equal(sampled(with_clip, clip_guidance_negative_prompt="a red triangle"), plain)  # CLIP guidance off: nothing to steer
    with pytest.raises(ValueError, match="clip_guidance_negative_prompt must be a string or a list of strings, got \\['a', 3\\]"):
        sampled(with_clip, clip_guidance_scale=5.0, clip_guidance_negative_prompt=["a", 3])

    through_x0 = sampled(with_clip, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle", guidance_reads="x0")
    assert not torch.equal(through_x0, steered) and not torch.equal(through_x0, plain)
    assert torch.equal(sampled(with_clip, guidance_reads="x0"), plain)  # no guidance that reads it: nothing changes
    with pytest.raises(ValueError, match="guidance_reads must be one of x_t, x0, got 'x_0'"):
        sampled(with_clip, clip_guidance_scale=5.0, guidance_reads="x_0")
    reads_x0 = GuidedDiffusionPipeline(
        pipe.unet, pipe.text_encoder, pipe.diffusion_config, {**pipe.sampling_config.to_dict(), "guidance_reads": "x0"}, clip=with_clip.clip
    )
    reads_x0.save_pretrained(tmp_path / "reads_x0")
    reads_x0 = GuidedDiffusionPipeline.from_pretrained(tmp_path / "reads_x0")
    assert reads_x0.sampling_config.guidance_reads == "x0"  # saved with the model: its calls read x0 unless told
    assert torch.equal(sampled(reads_x0, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle"), through_x0)
    assert torch.equal(sampled(reads_x0, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle", guidance_reads="x_t"), steered)
    with pytest.raises(ValueError, match="sampling: guidance_reads must be one of x_t, x0, got 'x_0'"):
        GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, pipe.diffusion_config, {"guidance_reads": "x_0"})

    with_clip.save_pretrained(tmp_path / "with_clip")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "with_clip")
    assert loaded.config["clip"] == with_clip.config["clip"]
    assert torch.equal(sampled(loaded, clip_guidance_scale=50.0, clip_guidance_prompt="a green triangle"), steered)
    (tmp_path / "with_clip" / "clip" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GuidedDiffusionPipeline.from_pretrained(tmp_path / "with_clip")
