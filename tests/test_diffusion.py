"""GaussianDiffusion against closed forms, in float64."""

import math

import pytest
import torch

from guided_diffusion import GaussianDiffusion
from guided_diffusion.diffusion import discretized_gaussian_log_likelihood, normal_kl
from guided_diffusion.schedule import get_beta_schedule

torch.manual_seed(0)
F64 = torch.float64


def make(T=50, schedule="linear", **kwargs):
    return GaussianDiffusion(get_beta_schedule(schedule, T), **kwargs)


def oracle_for(diffusion, x_star):
    """The exact model for data that is a single image ``x_star`` [1, ...]: it returns the true noise
    (or x_0, or v) of x_t, whatever t. Records the timesteps it was called with."""

    calls = []

    def model(x_t, t_original, **kwargs):
        calls.append(t_original.clone())
        t = torch.stack([(diffusion.timestep_map == s).nonzero()[0, 0] for s in t_original])
        x0 = x_star.expand_as(x_t)
        eps = diffusion.eps_from_x0(x_t, t, x0)
        return diffusion.prediction_target(x0, t, eps)

    model.calls = calls
    return model


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_equals_bayes_rule(schedule):
    d = make(100, schedule)
    x0 = torch.randn(6, 3, dtype=F64)
    x_t = torch.randn(6, 3, dtype=F64)
    for step in (1, 2, 50, 99):
        t = torch.full((6,), step)
        a, ab_prev, beta = d.alphas[step], d.alphas_cumprod_prev[step], d.betas[step]
        # q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of Gaussians in x_{t-1}.
        precision = a / beta + 1 / (1 - ab_prev)
        expected_mean = (a.sqrt() / beta * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0) / precision
        mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
        torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var.flatten(), torch.full((6,), 1 / precision.item(), dtype=F64), rtol=1e-12, atol=0)
        torch.testing.assert_close(log_var, var.log(), rtol=1e-12, atol=1e-12)


def test_posterior_by_numerical_integration():
    d = make(20, "cosine")
    x0, x_t, step = torch.tensor([0.3], dtype=F64), torch.tensor([-0.7], dtype=F64), 7
    grid = torch.linspace(-6, 6, 200001, dtype=F64)
    log_density = -((x_t - d.alphas[step].sqrt() * grid) ** 2) / (2 * d.betas[step]) - (
        (grid - d.alphas_cumprod[step - 1].sqrt() * x0) ** 2
    ) / (2 * (1 - d.alphas_cumprod[step - 1]))
    w = torch.exp(log_density - log_density.max())
    w = w / w.sum()
    mean_num = (w * grid).sum()
    var_num = (w * (grid - mean_num) ** 2).sum()
    mean, var, _ = d.q_posterior_mean_variance(x0[None], x_t[None], torch.tensor([step]))
    assert mean.item() == pytest.approx(mean_num.item(), abs=1e-8)
    assert var.item() == pytest.approx(var_num.item(), rel=1e-6)


def test_posterior_at_t0_returns_x0_and_clips_log_variance():
    d = make(30, "cosine")
    x0, x_t = torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(mean, x0, rtol=0, atol=1e-15)
    assert torch.all(var == 0)
    assert torch.allclose(log_var, d.posterior_variance[1].log().expand_as(log_var), rtol=1e-14, atol=0)


def test_q_sample_matches_closed_form_and_moments():
    d = make(100)
    x0 = torch.full((200000, 1), 0.5, dtype=F64)
    t = torch.full((200000,), 40)
    noise = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, noise=noise)
    ab = d.alphas_cumprod[40]
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    drawn = d.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    assert drawn.mean().item() == pytest.approx((ab.sqrt() * 0.5).item(), abs=0.01)
    assert drawn.var().item() == pytest.approx((1 - ab).item(), rel=0.02)
    again = d.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, drawn, rtol=0, atol=0)


def test_normal_kl_against_torch_distributions():
    m1, m2 = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    lv1, lv2 = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-12)
    assert torch.all(normal_kl(m1, lv1, m1, lv1).abs() < 1e-15)


def test_discretized_decoder_bins_sum_to_one_and_match_the_cdf_at_the_edges():
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in ((0.0, -2.0), (0.93, -4.0), (-1.2, -1.0), (0.1, -6.0)):
        m = torch.full_like(levels, mean)
        s = torch.full_like(levels, log_scale)
        logp = discretized_gaussian_log_likelihood(levels, m, s)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        sigma = math.exp(log_scale)

        def phi(z):
            return 0.5 * math.erfc(-z / math.sqrt(2))

        assert logp[0].exp().item() == pytest.approx(phi((-1 + 1 / 255 - mean) / sigma), rel=1e-9, abs=1e-300)
        assert logp[-1].exp().item() == pytest.approx(phi(-(1 - 1 / 255 - mean) / sigma), rel=1e-9, abs=1e-300)
        k = 100
        inner = phi((levels[k].item() + 1 / 255 - mean) / sigma) - phi((levels[k].item() - 1 / 255 - mean) / sigma)
        assert logp[k].exp().item() == pytest.approx(inner, rel=1e-8, abs=1e-300)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_round_trip(prediction):
    d = make(100, "cosine", prediction=prediction)
    x0, eps = torch.randn(4, 3, 2, 2, dtype=F64), torch.randn(4, 3, 2, 2, dtype=F64)
    t = torch.tensor([0, 10, 50, 99])
    x_t = d.q_sample(x0, t, noise=eps)
    torch.testing.assert_close(d.x0_from_eps(x_t, t, eps), x0)
    torch.testing.assert_close(d.eps_from_x0(x_t, t, x0), eps)
    v = d.v_from_x0_eps(x0, t, eps)
    torch.testing.assert_close(d.x0_from_v(x_t, t, v), x0)
    pred_x0, pred_eps = d.split_output(x_t, t, d.prediction_target(x0, t, eps))
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(pred_eps, eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_p_mean_variance_with_the_exact_model_is_the_posterior(prediction):
    d = make(40, prediction=prediction)
    x_star = torch.rand(1, 3, 4, 4, dtype=F64) * 1.6 - 0.8
    t = torch.tensor([0, 1, 20, 39])
    x_t = d.q_sample(x_star.expand(4, -1, -1, -1), t)
    out = d.p_mean_variance(oracle_for(d, x_star), x_t, t)
    mean, var, log_var = d.q_posterior_mean_variance(x_star.expand_as(x_t), x_t, t)
    torch.testing.assert_close(out["pred_x0"], x_star.expand_as(x_t))
    torch.testing.assert_close(out["mean"], mean)
    torch.testing.assert_close(out["variance"], var)
    torch.testing.assert_close(out["log_variance"], log_var)
    torch.testing.assert_close(out["eps"], d.eps_from_x0(x_t, t, out["pred_x0"]))


def test_fixed_large_variance_is_beta_with_posterior_variance_at_t0():
    d = make(40, variance="fixed_large")
    x_t = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0, 1, 30])
    out = d.p_mean_variance(lambda x, t: torch.zeros_like(x), x_t, t)
    expected = torch.stack([d.posterior_variance[1], d.betas[1], d.betas[30]])
    torch.testing.assert_close(out["variance"].flatten(), expected)
    torch.testing.assert_close(out["log_variance"].flatten(), expected.log())


def test_clipping_keeps_pred_x0_in_range_and_eps_consistent():
    d = make(40)
    x_t = torch.randn(2, 8, dtype=F64) * 3
    t = torch.tensor([5, 35])
    out = d.p_mean_variance(lambda x, t: -3 * torch.ones_like(x), x_t, t)
    assert out["pred_x0"].abs().max() <= 1
    torch.testing.assert_close(out["eps"], d.eps_from_x0(x_t, t, out["pred_x0"]))


def test_p_sample_adds_variance_times_guidance_and_no_noise_at_t0():
    d = make(40)
    model = lambda x, t: 0.1 * x  # noqa: E731
    x_t = torch.randn(3, 2, 2, dtype=F64)
    t = torch.tensor([0, 3, 39])
    noise = torch.randn_like(x_t)
    seen = {}

    def cond_fn(x, t_original, **kwargs):
        seen["t"], seen["kwargs"] = t_original, kwargs
        return torch.full_like(x, 2.0)

    out = d.p_mean_variance(model, x_t, t)
    step = d.p_sample(model, x_t, t, cond_fn=cond_fn, noise=noise, model_kwargs={})
    mask = torch.tensor([0.0, 1.0, 1.0], dtype=F64).view(3, 1, 1)
    expected = out["mean"] + out["variance"] * 2.0 + mask * (0.5 * out["log_variance"]).exp() * noise
    torch.testing.assert_close(step["sample"], expected)
    torch.testing.assert_close(step["pred_x0"], out["pred_x0"])
    assert torch.equal(seen["t"], t)


def test_ddim_with_eta_one_is_the_ancestral_step():
    d = make(50)
    model = lambda x, t: torch.tanh(x) * 0.5  # noqa: E731
    x_t = torch.randn(4, 3, 2, 2, dtype=F64)
    t = torch.tensor([0, 1, 25, 49])
    noise = torch.randn_like(x_t)
    ancestral = d.p_sample(model, x_t, t, noise=noise)
    ddim = d.ddim_sample(model, x_t, t, eta=1.0, noise=noise)
    torch.testing.assert_close(ddim["sample"], ancestral["sample"], rtol=1e-10, atol=1e-12)
    ab, ab_prev = d.alphas_cumprod, d.alphas_cumprod_prev
    sigma2 = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    torch.testing.assert_close(sigma2[1:], d.posterior_variance[1:], rtol=1e-12, atol=0)


def test_ddim_eta_zero_is_deterministic_and_guidance_uses_the_score_form():
    d = make(50)
    model = lambda x, t: 0.3 * x  # noqa: E731
    x_t = torch.randn(2, 5, dtype=F64)
    t = torch.tensor([10, 30])
    out = d.p_mean_variance(model, x_t, t)
    plain = d.ddim_sample(model, x_t, t)
    ab_prev = d.alphas_cumprod_prev[t].view(2, 1)
    torch.testing.assert_close(plain["sample"], ab_prev.sqrt() * out["pred_x0"] + (1 - ab_prev).sqrt() * out["eps"])
    grad = torch.randn_like(x_t)
    guided = d.ddim_sample(model, x_t, t, cond_fn=lambda x, t: grad)
    eps = out["eps"] - (1 - d.alphas_cumprod[t].view(2, 1)).sqrt() * grad
    x0 = d.x0_from_eps(x_t, t, eps)
    torch.testing.assert_close(guided["pred_x0"], x0)
    torch.testing.assert_close(guided["sample"], ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_loss_is_zero_for_the_exact_model_and_mse_otherwise(prediction):
    d = make(40, prediction=prediction)
    x_star = torch.rand(1, 3, 4, 4, dtype=F64) - 0.5
    x0 = x_star.expand(5, -1, -1, -1)
    t = torch.tensor([0, 5, 10, 20, 39])
    noise = torch.randn_like(x0)
    exact = d.training_losses(oracle_for(d, x_star), x0, t, noise=noise)
    assert exact["loss"].abs().max() < 1e-20
    zero = d.training_losses(lambda x, t: torch.zeros_like(x), x0, t, noise=noise)
    target = d.prediction_target(x0, t, noise)
    torch.testing.assert_close(zero["loss"], target.pow(2).mean(dim=(1, 2, 3)))


def test_min_snr_weighting_weights_the_x0_error_the_same_for_every_target():
    t = torch.tensor([1, 10, 25, 39])
    x0 = torch.randn(4, 6, dtype=F64)
    noise = torch.randn_like(x0)
    wrong_x0 = x0 + 0.1 * torch.randn_like(x0)
    losses = {}
    for prediction in ("eps", "x0", "v"):
        d = make(40, prediction=prediction)
        x_t = d.q_sample(x0, t, noise=noise)
        wrong_eps = d.eps_from_x0(x_t, t, wrong_x0)
        output = d.prediction_target(wrong_x0, t, wrong_eps)
        losses[prediction] = d.training_losses(lambda x, s: output, x0, t, noise=noise, snr_gamma=5.0)["loss"]
    snr = d.snr(t)
    expected = snr.clamp(max=5.0) * ((wrong_x0 - x0) ** 2).mean(dim=1)
    for prediction, loss in losses.items():
        torch.testing.assert_close(loss, expected.to(loss.dtype), rtol=1e-5, atol=1e-8, msg=prediction)


def test_prior_bpd_is_the_kl_to_a_standard_normal():
    d = make(30)
    x0 = torch.rand(2, 3, 2, 2, dtype=F64) * 2 - 1
    ab = d.alphas_cumprod[-1]
    kl = 0.5 * (-1 - torch.log(1 - ab) + (1 - ab) + ab * x0**2)
    torch.testing.assert_close(d.prior_bpd(x0), kl.mean(dim=(1, 2, 3)) / math.log(2))


def test_nll_bpd_terms_are_the_kl_and_decoder_terms():
    d = make(6, "cosine")
    x0 = torch.randint(0, 256, (2, 3, 2, 2)).to(F64) / 127.5 - 1
    noise = torch.randn(6, *x0.shape, dtype=F64)
    model = lambda x, t: 0.5 * x  # noqa: E731
    out = d.nll_bpd(model, x0, noise=noise)
    assert out["vb"].shape == (2, 6)
    for step in range(6):
        t = torch.full((2,), step)
        x_t = d.q_sample(x0, t, noise=noise[step])
        p = d.p_mean_variance(model, x_t, t)
        if step == 0:
            expected = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"].expand_as(x0))
        else:
            q_mean, _, q_log_var = d.q_posterior_mean_variance(x0, x_t, t)
            expected = normal_kl(q_mean, q_log_var, p["mean"], p["log_variance"])
        torch.testing.assert_close(out["vb"][:, step], expected.mean(dim=(1, 2, 3)) / math.log(2))
    torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + d.prior_bpd(x0))


def test_nll_bpd_of_the_exact_model_has_no_kl_terms():
    d = make(20, "cosine")
    x_star = torch.randint(0, 256, (1, 3, 4, 4)).to(F64) / 127.5 - 1
    out = d.nll_bpd(oracle_for(d, x_star), x_star)
    assert out["vb"][:, 1:].abs().max() < 1e-9
    assert out["vb"][0, 0] > 0


def test_respacing_keeps_alpha_bar_and_passes_original_timesteps():
    d = make(1000, "cosine")
    r = d.respace("ddim50")
    kept = torch.arange(0, 1000, 20)
    torch.testing.assert_close(r.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert torch.equal(r.timestep_map, kept)
    x_star = torch.rand(1, 2, dtype=F64) - 0.5
    model = oracle_for(r, x_star)
    x = torch.randn(1, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for step in reversed(range(50)):
        x = r.ddim_sample(model, x, torch.tensor([step]))["sample"]
    torch.testing.assert_close(x, x_star)
    assert [int(c) for c in torch.cat(model.calls)] == list(reversed(kept.tolist()))
    twice = r.respace("10")
    torch.testing.assert_close(twice.alphas_cumprod, d.alphas_cumprod[twice.timestep_map], rtol=1e-12, atol=0)


def test_ancestral_sampling_with_the_exact_model_reaches_the_data():
    d = make(100).respace("25")
    x_star = torch.rand(1, 3, dtype=F64) - 0.5
    model = oracle_for(d, x_star)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, dtype=F64, generator=gen)
    for step in reversed(range(d.num_timesteps)):
        x = d.p_sample(model, x, torch.tensor([step]), generator=gen)["sample"]
    torch.testing.assert_close(x, x_star)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="eps, x0, v"):
        make(10, "cosine", prediction="score")
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        make(10, "cosine", variance="learned")
    with pytest.raises(ValueError, match="more than 20 timesteps"):
        get_beta_schedule("linear", 20)
    d = make(10, "cosine")
    with pytest.raises(ValueError, match="noise has shape"):
        d.q_sample(torch.zeros(2, 3), torch.tensor([1, 2]), noise=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="model output has shape"):
        d.p_mean_variance(lambda x, t: x[:, :1], torch.zeros(2, 3), torch.tensor([1, 2]))


def test_schedule_tables_are_cached_by_name_per_device_and_dtype():
    """Keyed by name, not by ``id()`` of a tensor, which a temporary could reuse."""
    d = GaussianDiffusion(get_beta_schedule("cosine", 20))
    t = torch.tensor([3, 19])
    for dtype in (torch.float32, torch.float64, torch.float32):
        x0 = torch.randn(2, 1, 2, 2, dtype=dtype)
        noise = torch.randn_like(x0)
        expected = d.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - d.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * noise
        torch.testing.assert_close(d.q_sample(x0, t, noise=noise), expected.to(dtype))
    assert sorted((name, str(dtype)) for name, _, dtype in d._tables) == sorted(
        (name, str(dtype)) for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod") for dtype in (torch.float32, torch.float64)
    )


# ------------------------------------------------------------------------- learned variances


def learned_model(prediction: torch.Tensor, v: float | torch.Tensor):
    """A model for a ``learned_range`` process: ``prediction`` [B, C, ...] then the interpolation v."""
    v = torch.as_tensor(v, dtype=prediction.dtype).expand_as(prediction)
    return lambda x_t, t, **_: torch.cat([prediction, v], dim=1)


def test_the_learned_variance_interpolates_beta_and_beta_tilde_in_log_space():
    d = make(variance="learned_range")
    x_t, pred = torch.randn(3, 2, 4, 4, dtype=F64), torch.randn(3, 2, 4, 4, dtype=F64)
    t = torch.tensor([0, 7, 49])
    for v, expected in ((-1.0, d.posterior_log_variance_clipped), (1.0, torch.log(torch.cat([d.posterior_variance[1:2], d.betas[1:]])))):
        out = d.p_mean_variance(learned_model(pred, v), x_t, t)
        torch.testing.assert_close(out["log_variance"], expected[t].view(-1, 1, 1, 1).expand_as(x_t))
    out = d.p_mean_variance(learned_model(pred, 0.2), x_t, t)  # frac 0.6
    closed = 0.6 * torch.log(d.betas) + 0.4 * torch.log(d.posterior_variance)
    torch.testing.assert_close(out["log_variance"][1:], closed[t[1:]].view(-1, 1, 1, 1).expand_as(x_t[1:]))
    torch.testing.assert_close(out["variance"], out["log_variance"].exp())
    # the mean is the fixed-variance process's for the same prediction
    torch.testing.assert_close(out["mean"], make().p_mean_variance(lambda *_: pred, x_t, t)["mean"])


@pytest.mark.parametrize("v, fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_the_hybrid_losss_vlb_term_is_the_fixed_variance_kl_at_the_ends(v, fixed):
    d = make(variance="learned_range")
    x0 = torch.rand(4, 2, 4, 4, dtype=F64) * 2 - 1
    t, noise = torch.tensor([0, 1, 20, 49]), torch.randn(4, 2, 4, 4, dtype=F64)
    pred = torch.randn(4, 2, 4, 4, dtype=F64)
    terms = d.training_losses(learned_model(pred, v), x0, t, noise=noise, vlb_weight=0.001)
    reference = make(variance=fixed)
    x_t = reference.q_sample(x0, t, noise=noise)
    kl = reference.vb_terms_bpd(lambda *_: pred, x0, x_t, t)["output"]  # the KL (decoder NLL at t = 0), in bits
    torch.testing.assert_close(terms["vb"], kl)
    plain = reference.training_losses(lambda *_: pred, x0, t, noise=noise)
    torch.testing.assert_close(terms["mse"], plain["mse"])
    torch.testing.assert_close(terms["loss"], plain["mse"] + 0.001 * 50 * kl)


def test_the_vlb_term_trains_only_the_variance():
    d = make(variance="learned_range")
    x0, t = torch.rand(3, 2, 4, 4, dtype=F64) * 2 - 1, torch.tensor([3, 10, 40])
    output = torch.randn(3, 4, 4, 4, dtype=F64, requires_grad=True)
    terms = d.training_losses(lambda *_: output, x0, t, noise=torch.randn(3, 2, 4, 4, dtype=F64))
    (grad,) = torch.autograd.grad(terms["loss"].sum(), output, retain_graph=True)
    (mse_grad,) = torch.autograd.grad(terms["mse"].sum(), output)
    torch.testing.assert_close(grad[:, :2], mse_grad[:, :2])  # the mean learns from L_simple alone
    assert mse_grad[:, 2:].abs().max() == 0 and grad[:, 2:].abs().max() > 0  # the variance from L_vlb


def test_a_learned_range_model_must_output_twice_the_channels():
    d = make(variance="learned_range")
    x_t = torch.randn(2, 3, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"model output has shape \(2, 3, 4, 4\), expected \(2, 6, 4, 4\)"):
        d.p_mean_variance(lambda *_: x_t, x_t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"expected \(2, 3, 4, 4\)"):
        make().p_mean_variance(lambda *_: torch.cat([x_t, x_t], 1), x_t, torch.tensor([1, 2]))


@pytest.mark.parametrize("v, fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_the_ancestral_sampler_uses_the_learned_variance(v, fixed):
    from guided_diffusion.samplers import sample

    def prediction(x_t, t):
        return torch.tanh(x_t) * 0.5 + t.view(-1, 1, 1, 1).to(x_t.dtype) / 1000

    shape = (2, 2, 4, 4)

    def draw(diffusion, model, sampler="ddpm"):
        return sample(model, diffusion, shape, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(0), dtype=F64)

    learned = lambda x_t, t, **_: torch.cat([prediction(x_t, t), torch.full_like(x_t, v)], dim=1)  # noqa: E731
    fixed_model = lambda x_t, t, **_: prediction(x_t, t)  # noqa: E731
    torch.testing.assert_close(draw(make(variance="learned_range"), learned), draw(make(variance=fixed), fixed_model))
    # the other solvers read the prediction and leave the variance
    torch.testing.assert_close(draw(make(variance="learned_range"), learned, "dpm++"), draw(make(variance=fixed), fixed_model, "dpm++"))


def test_classifier_free_guidance_mixes_the_prediction_and_keeps_the_conditional_variance():
    from guided_diffusion.guidance import ClassifierFreeGuidance

    def model(x_t, t, text_features):
        return torch.cat([x_t * text_features.view(-1, 1, 1, 1), text_features.view(-1, 1, 1, 1).expand_as(x_t) * 10], dim=1)

    x, t = torch.randn(2, 3, 4, 4, dtype=F64), torch.tensor([5, 9])
    cond, uncond = torch.tensor([2.0, 3.0], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64)
    out = ClassifierFreeGuidance(model, 4.0, {"text_features": uncond})(x, t, text_features=cond)
    c, u = model(x, t, cond), model(x, t, uncond)
    torch.testing.assert_close(out[:, :3], u[:, :3] + 4.0 * (c[:, :3] - u[:, :3]))
    torch.testing.assert_close(out[:, 3:], c[:, 3:])


# ------------------------------------------------------------------------- loss weightings and timesteps


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting, w_of_snr", [
    ({"snr_gamma": 5.0}, lambda snr: snr.clamp(max=5.0)),
    ({"sigma_data": 0.5}, lambda snr: snr + 4.0),  # lambda(sigma) = 1 / sigma^2 + 1 / sigma_data^2
    ({"sigma_data": 1.0}, lambda snr: snr + 1.0),
])
def test_every_weighting_weights_the_x0_error_by_its_closed_form(prediction, weighting, w_of_snr):
    d = make(T=1000, prediction=prediction)
    x0, t = torch.rand(4, 2, 4, 4, dtype=F64) * 2 - 1, torch.tensor([0, 100, 500, 999])
    noise, output = torch.randn(4, 2, 4, 4, dtype=F64), torch.randn(4, 2, 4, 4, dtype=F64)
    terms = d.training_losses(lambda *_: output, x0, t, noise=noise, **weighting)
    x_t = d.q_sample(x0, t, noise=noise)
    x0_error = ((d.split_output(x_t, t, output)[0] - x0) ** 2).flatten(1).mean(1)
    snr = d.alphas_cumprod[t] / (1 - d.alphas_cumprod[t])
    torch.testing.assert_close(terms["loss"], w_of_snr(snr) * x0_error)


def test_the_weights_at_known_snrs():
    d = make(T=1000, prediction="v")
    t = torch.tensor([int((d.snr_values - 1).abs().argmin())])  # SNR ~ 1
    snr = float(d.snr(t))
    assert abs(snr - 1) < 0.01
    assert float(d.loss_weight(t, sigma_data=0.5)) == pytest.approx((snr + 4) / (snr + 1))  # ~ 2.5
    assert float(d.loss_weight(t, snr_gamma=5.0)) == pytest.approx(snr / (snr + 1))  # ~ 0.5
    assert float(make(T=1000, prediction="eps").loss_weight(t, snr_gamma=0.5)) == pytest.approx(0.5 / snr)
    assert d.loss_weight(t) is None
    with pytest.raises(ValueError, match="choose one loss weighting"):
        d.loss_weight(t, snr_gamma=5.0, sigma_data=0.5)


def test_log_normal_timesteps_follow_the_lognormal_sigma_and_uniform_ones_are_unchanged():
    d = make(T=1000)
    t = d.sample_timesteps(40_000, scheme="log_normal", log_normal=(-1.2, 1.2), generator=torch.Generator().manual_seed(0))
    log_sigma = d.log_sigmas[t]
    assert abs(float(log_sigma.mean()) + 1.2) < 0.03 and abs(float(log_sigma.std()) - 1.2) < 0.03
    draws = -1.2 + 1.2 * torch.randn(40_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(t, (draws[:, None] - d.log_sigmas[None]).abs().argmin(1))  # each the nearest step
    uniform = d.sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="unknown timestep sampling 'beta'"):
        d.sample_timesteps(2, scheme="beta")
