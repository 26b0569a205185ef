"""End-point error of our samplers and of diffusers' schedulers against the exact probability-flow ODE.

    python benchmarks/sampler_accuracy.py                        # d=16, 512 samples, NFE 5 10 20 50: ~1 minute on 2 cores
    python benchmarks/sampler_accuracy.py --seed 1 --out /tmp/accuracy
    python benchmarks/sampler_accuracy.py --nfe 10 20 --samples 128 --out /tmp/accuracy

A closed-form problem, in float64, with no training: the data are a Gaussian mixture in ``--dim``
dimensions (8 components, means uniform in [-0.8, 0.8], isotropic standard deviations uniform in
[0.05, 0.2], drawn with ``--seed``), so the exact denoiser of the scaled state x = x_0 + sigma eps is

    D(x, sigma) = sum_k w_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
    w_k ∝ pi_k N(x; mu_k, (s_k^2 + sigma^2) I),

and the "model" returns the exact eps for x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps at timestep t
of the linear schedule (T = 1000), a whole or fractional step turned into sigma by interpolating log sigma
linearly between the neighbouring trained steps (the inverse of ``GaussianDiffusion.sigma_to_timestep``).
Every method starts from the same x_T ~ N(0, I) at t = 999. The reference is the exact probability-flow
ODE from there to sigma = 0, solved with scipy's DOP853 (rtol 1e-10, atol 1e-12) in u = log sigma,
dx/du = x - D(x, e^u), down to sigma = 1e-4, where D gives the end point. It is checked by running our
``dpm++3m`` on the ``log_snr`` schedule with 250, 500 and 1000 steps (the most a schedule takes): those
converge, at third order, to the "trained-range" end point (the exact ODE down to sigma_0, the level of
t = 0, then D there), which the sampler's last step (sigma_0 -> 0, one denoising step) aims at; the
distance between that and the reference is the floor every sampler that stops at t = 0 shares.

The error of a method is the RMS over samples and dimensions of (its end point - the reference), on the
x_0 scale; the median over samples of each sample's error is recorded too, since at 20 NFE and more
the RMS can be one sample, near the boundary between two components, ending in the wrong one.

Compared at equal numbers of model evaluations (NFE, counted; each method gets the most steps that fit):
our deterministic samplers (``ddim``, ``euler``, ``heun``, ``dpm++``, ``dpm++3m``, ``unipc``; not the stochastic
``ddpm`` and ``dpm++2m-sde``) on every timestep schedule, and, in diffusers' standard loop, the issue's
list: DDIM, DPM-Solver++ (2M, 3M, with and without Karras sigmas), UniPC (with and without), DEIS, Euler
(with and without) and Heun, each with the "linspace", "leading" and "trailing" timestep spacings; plus,
marked as beyond that list, diffusers' log-SNR-uniform options (``use_lu_lambdas`` for DPM-Solver++,
``use_exponential_sigmas`` for UniPC and DEIS), the like-for-like counterparts of our ``log_snr``.
Diffusers keeps its schedule tables in float32 and its DPM-Solver++ and Euler steps cast the state to
float32; the state passed in is float64. Writes ``accuracy.md`` and ``accuracy.json`` into ``--out``;
the last line printed is one JSON object: the best of each side at each NFE (RMS and median error) and
the ratios ours / diffusers. ``diffusers`` comes from the ``bench`` extra: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.samplers import TIMESTEP_SCHEDULES, sample, steps_for_nfe
from guided_diffusion.schedule import get_beta_schedule

NUM_TIMESTEPS = 1000
COMPONENTS = 8
OUR_SAMPLERS = ("ddim", "euler", "heun", "dpm++", "dpm++3m", "unipc")  # the deterministic ones
SPACINGS = ("linspace", "leading", "trailing")
REFERENCE_END_SIGMA = 1e-4
CHECK_STEPS = (250, 500, NUM_TIMESTEPS)  # dpm++3m on log_snr; a schedule takes at most T steps
DIFFUSERS_PROCESS = {
    "num_train_timesteps": NUM_TIMESTEPS,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}
NO_THRESHOLDING = {"thresholding": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--dim``, ``--samples``, ``--seed``, ``--nfe``, ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=16, help="data dimensions")
    parser.add_argument("--samples", type=int, default=512, help="starting points x_T")
    parser.add_argument("--seed", type=int, default=0, help="draws the mixture and x_T")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50], help="model-evaluation budgets")
    parser.add_argument(
        "--out", type=Path, default=Path("docs/samplers"), help="folder for accuracy.md and accuracy.json"
    )
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ the problem


@dataclass
class GaussianMixture:
    """pi_k N(mu_k, s_k^2 I): ``weights`` [K], ``means`` [K, d], ``stds`` [K], float64."""

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    @classmethod
    def draw(cls, dim: int, generator: torch.Generator) -> "GaussianMixture":
        """``COMPONENTS`` components: weights in proportion to U(0.5, 1.5), means U(-0.8, 0.8)^d, stds U(0.05, 0.2)."""
        weights = 0.5 + torch.rand(COMPONENTS, generator=generator, dtype=torch.float64)
        means = 1.6 * torch.rand(COMPONENTS, dim, generator=generator, dtype=torch.float64) - 0.8
        stds = 0.05 + 0.15 * torch.rand(COMPONENTS, generator=generator, dtype=torch.float64)
        return cls(weights / weights.sum(), means, stds)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The exact E[x_0 | x_0 + sigma eps = x] for x [B, d] and sigma (a number or [B, 1]) > 0.

        Written as x - sum_k w_k sigma^2 / (s_k^2 + sigma^2) (x - mu_k), which is exact as sigma -> 0.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        variance = self.stds**2 + sigma**2  # [B or 1, K]
        offset = x[:, None, :] - self.means  # [B, K, d]
        log_density = (
            self.weights.log()
            - 0.5 * x.shape[1] * torch.log(2 * math.pi * variance)
            - 0.5 * offset.square().sum(-1) / variance
        )
        w = torch.exp(log_density - torch.logsumexp(log_density, dim=1, keepdim=True))
        return x - ((w * sigma**2 / variance)[..., None] * offset).sum(1)


class ExactEpsModel:
    """``model(x_t, t) -> eps``, exact for the mixture, counting its calls in ``calls``.

    ``t`` is a tensor of whole or fractional timesteps, one per sample or one for all (0-d, as diffusers
    passes it); sigma(t) interpolates log sigma linearly between the neighbouring trained steps.
    """

    def __init__(self, mixture: GaussianMixture, diffusion: GaussianDiffusion) -> None:
        self.mixture = mixture
        self.log_sigmas = diffusion.log_sigmas
        self.calls = 0

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma [B or 1, 1] of timesteps ``t`` (long or float, [B] or 0-d), float64."""
        t = torch.as_tensor(t).to(torch.float64).reshape(-1, 1)
        if not bool(((t >= 0) & (t <= NUM_TIMESTEPS - 1)).all()):
            raise ValueError(f"timesteps outside 0..{NUM_TIMESTEPS - 1}: {t.flatten().tolist()}")
        low = t.floor().long().clamp(max=NUM_TIMESTEPS - 2)
        w = t - low
        return torch.exp((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1])

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = self.sigma(t)
        x = x_t.to(torch.float64) * torch.sqrt(1 + sigma**2)
        return ((x - self.mixture.denoise(x, sigma)) / sigma).to(x_t.dtype)


@dataclass
class Reference:
    """The exact ODE end point from x_T and two checks of it.

    ``exact``: D at sigma = ``REFERENCE_END_SIGMA`` of the ODE solution there. ``trained_range``: D at
    sigma_0 (t = 0) of the ODE solution there, the end point of a sampler that stops at the trained range's
    lowest level and denoises in one step, exactly. ``last_denoise_rms``: how far D moved the solution at
    ``REFERENCE_END_SIGMA``, a bound on what stopping there costs. ``ode_evaluations``: D calls by DOP853.
    """

    exact: torch.Tensor
    trained_range: torch.Tensor
    last_denoise_rms: float
    ode_evaluations: int


def exact_reference(mixture: GaussianMixture, diffusion: GaussianDiffusion, x_T: torch.Tensor) -> Reference:
    """Solve dx/du = x - D(x, e^u), u = log sigma, from sigma_{T-1} (x = x_T sqrt(1 + sigma^2)) down to sigma_0
    and on to ``REFERENCE_END_SIGMA`` with DOP853 (rtol 1e-10, atol 1e-12)."""
    shape = x_T.shape

    def velocity(u: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y).view(shape)
        return (x - mixture.denoise(x, math.exp(u))).flatten().numpy()

    def solve(y0: torch.Tensor, u_from: float, u_to: float) -> tuple[torch.Tensor, int]:
        result = solve_ivp(velocity, (u_from, u_to), y0.flatten().numpy(), method="DOP853", rtol=1e-10, atol=1e-12)
        if not result.success:
            raise RuntimeError(f"reference ODE solve failed: {result.message}")
        return torch.from_numpy(result.y[:, -1].copy()).view(shape), int(result.nfev)

    sigma_max, sigma_min = float(diffusion.sigmas[-1]), float(diffusion.sigmas[0])
    x_min, evaluations_high = solve(x_T * math.sqrt(1 + sigma_max**2), math.log(sigma_max), math.log(sigma_min))
    x_end, evaluations_low = solve(x_min, math.log(sigma_min), math.log(REFERENCE_END_SIGMA))
    exact = mixture.denoise(x_end, REFERENCE_END_SIGMA)
    return Reference(
        exact=exact,
        trained_range=mixture.denoise(x_min, sigma_min),
        last_denoise_rms=rms(exact - x_end),
        ode_evaluations=evaluations_high + evaluations_low,
    )


def rms(x: torch.Tensor) -> float:
    """The root mean square of all entries."""
    return float(x.to(torch.float64).square().mean().sqrt())


# ------------------------------------------------------------------------------------------ the methods


def run_ours(
    model: ExactEpsModel, diffusion: GaussianDiffusion, x_T: torch.Tensor, sampler: str, schedule: str, steps: int
) -> torch.Tensor:
    """x_0 [B, d] from our ``sampler`` in ``steps`` steps of ``schedule``, in float64."""
    return sample(
        model, diffusion, tuple(x_T.shape), sampler=sampler, steps=steps, timestep_schedule=schedule, noise=x_T,
        dtype=torch.float64,
    )


@dataclass(frozen=True)
class DiffusersScheduler:
    """A diffusers scheduler class and its options beyond the shared process (``DIFFUSERS_PROCESS``)."""

    label: str
    class_name: str
    options: dict[str, Any]
    float32_steps: bool  # its step() casts the state to float32 (every scheduler keeps float32 tables)
    listed: bool = True  # in the list; False: a log-SNR-uniform option added for a like-for-like schedule

    def build(self, spacing: str) -> Any:
        """A fresh scheduler of this kind with ``spacing``."""
        import diffusers

        return getattr(diffusers, self.class_name)(**DIFFUSERS_PROCESS, timestep_spacing=spacing, **self.options)


DPM = {"algorithm_type": "dpmsolver++", **NO_THRESHOLDING}
DPM_CLASS, UNIPC_CLASS, DEIS_CLASS = "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"
DIFFUSERS_SCHEDULERS = (
    DiffusersScheduler("DDIM", "DDIMScheduler", {"clip_sample": False, **NO_THRESHOLDING}, False),
    DiffusersScheduler("DPM-Solver++(2M)", DPM_CLASS, {"solver_order": 2, **DPM}, True),
    DiffusersScheduler("DPM-Solver++(2M) karras", DPM_CLASS, {"solver_order": 2, "use_karras_sigmas": True, **DPM}, True),
    DiffusersScheduler("DPM-Solver++(3M)", DPM_CLASS, {"solver_order": 3, **DPM}, True),
    DiffusersScheduler("DPM-Solver++(3M) karras", DPM_CLASS, {"solver_order": 3, "use_karras_sigmas": True, **DPM}, True),
    DiffusersScheduler("UniPC", UNIPC_CLASS, dict(NO_THRESHOLDING), False),
    DiffusersScheduler("UniPC karras", UNIPC_CLASS, {"use_karras_sigmas": True, **NO_THRESHOLDING}, False),
    DiffusersScheduler("DEIS", DEIS_CLASS, dict(NO_THRESHOLDING), False),
    DiffusersScheduler("Euler", "EulerDiscreteScheduler", {}, True),
    DiffusersScheduler("Euler karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, True),
    DiffusersScheduler("Heun", "HeunDiscreteScheduler", {}, False),
    # levels evenly spaced in log sigma, like our "log_snr" schedule (non-default diffusers options)
    DiffusersScheduler("DPM-Solver++(2M) lu_lambdas", DPM_CLASS, {"solver_order": 2, "use_lu_lambdas": True, **DPM}, True, listed=False),
    DiffusersScheduler("DPM-Solver++(3M) lu_lambdas", DPM_CLASS, {"solver_order": 3, "use_lu_lambdas": True, **DPM}, True, listed=False),
    DiffusersScheduler("UniPC exponential", UNIPC_CLASS, {"use_exponential_sigmas": True, **NO_THRESHOLDING}, False, listed=False),
    DiffusersScheduler("DEIS exponential", DEIS_CLASS, {"use_exponential_sigmas": True, **NO_THRESHOLDING}, False, listed=False),
)


def diffusers_steps(kind: DiffusersScheduler, spacing: str, nfe: int) -> int:
    """The most inference steps whose timestep list (one model call each) fits in ``nfe``."""
    best = 0
    for steps in range(1, nfe + 1):
        scheduler = kind.build(spacing)
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= nfe:
            best = steps
    return best


def run_diffusers(
    model: ExactEpsModel, x_T: torch.Tensor, kind: DiffusersScheduler, spacing: str, steps: int
) -> tuple[torch.Tensor, float]:
    """(x_0 [B, d], first timestep) from diffusers' standard loop with a fresh scheduler, in float64."""
    scheduler = kind.build(spacing)
    scheduler.set_timesteps(steps)
    latents = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        eps = model(model_input, t)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents, float(scheduler.timesteps[0])


# ------------------------------------------------------------------------------------------ the report


def errors(x0: torch.Tensor, reference: Reference) -> dict[str, float]:
    """The end point's RMS error against the exact reference and against the trained-range one, and the
    median over samples of each sample's RMS error (the RMS can be one sample that ends in another mode)."""
    return {
        "error": rms(x0 - reference.exact),
        "error_vs_trained_range": rms(x0 - reference.trained_range),
        "median_sample_error": float((x0 - reference.exact).square().mean(1).sqrt().median()),
    }


def best_per_nfe(rows: list[dict[str, Any]], budgets: list[int], metric: str = "error") -> dict[int, dict[str, Any]]:
    """The row with the least ``metric`` at each budget."""
    return {nfe: min((r for r in rows if r["nfe_budget"] == nfe), key=lambda r: r[metric]) for nfe in budgets}


def summarize(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    """For the RMS error (``error``) and the median per-sample error, at each budget: our best; diffusers'
    best over the issue's configurations (``diffusers``), over those of them whose first timestep is
    T - 1, the start the reference assumes (``diffusers_from_t999``), and over all, the log-SNR-uniform
    options included (``diffusers_all``); the ratio of our figure to each. The goal, our best RMS error
    <= 0.8 x diffusers' best at 10 and 20 NFE, is judged against ``diffusers`` and ``diffusers_all``."""
    listed = [r for r in theirs if r["in_issue_list"]]
    groups = {
        "diffusers": listed,
        "diffusers_from_t999": [r for r in listed if r["first_timestep"] == NUM_TIMESTEPS - 1],
        "diffusers_all": theirs,
    }
    summary: dict[str, Any] = {}
    for metric in ("error", "median_sample_error"):
        best_ours = best_per_nfe(ours, budgets, metric)
        best_theirs = {group: best_per_nfe(rows, budgets, metric) for group, rows in groups.items()}
        summary[metric] = {}
        for n in budgets:
            o = best_ours[n]
            entry: dict[str, Any] = {
                "ours": {"name": f"{o['sampler']}/{o['schedule']}", metric: float(f"{o[metric]:.4g}"), "nfe": o["nfe"]}
            }
            for group, rows in best_theirs.items():
                d = rows[n]
                entry[group] = {
                    "name": f"{d['scheduler']}/{d['spacing']}", metric: float(f"{d[metric]:.4g}"), "nfe": d["nfe"]
                }
                entry[f"ratio_vs_{group}"] = round(o[metric] / d[metric], 3)
            summary[metric][str(n)] = entry
    goal = [str(n) for n in (10, 20) if n in budgets]
    for group in ("diffusers", "diffusers_all"):
        met = all(summary["error"][n][f"ratio_vs_{group}"] <= 0.8 for n in goal)
        summary[f"goal_met_vs_{group}"] = met if goal else None
    return summary


def cell(row: dict[str, Any], spacing: bool = False) -> str:
    """``error``, with the counted NFE when under the budget and, for diffusers, the spacing."""
    text = f"{row['error']:.2e}"
    if row["nfe"] != row["nfe_budget"]:
        text += f" [{row['nfe']}]"
    if spacing:
        text += f" ({row['spacing']})"
    return text


def markdown(
    ours: list[dict[str, Any]], theirs: list[dict[str, Any]], budgets: list[int], summary: dict[str, Any], setup: str
) -> str:
    """The report: the RMS error of each method and schedule (diffusers: the best spacing per cell; * marks
    the log-SNR-uniform options beyond the issue's list), then, for the RMS and the median per-sample
    error, the best of each side and the ratios per NFE."""
    header = "| method | schedule | " + " | ".join(f"{n} NFE" for n in budgets) + " |"
    lines = [setup, "", header, "|---|---|" + "---|" * len(budgets)]
    for sampler in OUR_SAMPLERS:
        for schedule in TIMESTEP_SCHEDULES:
            rows = {r["nfe_budget"]: r for r in ours if r["sampler"] == sampler and r["schedule"] == schedule}
            lines.append(f"| ours `{sampler}` | `{schedule}` | " + " | ".join(cell(rows[n]) for n in budgets) + " |")
    for kind in DIFFUSERS_SCHEDULERS:
        rows = best_per_nfe([r for r in theirs if r["scheduler"] == kind.label], budgets)
        mark = "" if kind.listed else "*"
        cells = " | ".join(cell(rows[n], spacing=True) for n in budgets)
        lines.append(f"| diffusers {kind.label}{mark} | best spacing | {cells} |")
    for metric, title in (("error", "RMS error"), ("median_sample_error", "median per-sample error")):
        lines += [
            "",
            f"| NFE | ours, best {title} | diffusers, best (issue's list) | ours / that | same, starting at t = 999 "
            "| ours / that | diffusers, best incl. * | ours / that |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in budgets:
            b = summary[metric][str(n)]
            parts = [f"{b['ours'][metric]:.2e} `{b['ours']['name']}`"]
            for group in ("diffusers", "diffusers_from_t999", "diffusers_all"):
                parts += [f"{b[group][metric]:.2e} {b[group]['name']}", f"**{b[f'ratio_vs_{group}']:.3f}**"]
            lines.append(f"| {n} | " + " | ".join(parts) + " |")
    lines += [
        "",
        "Errors: RMS over samples and dimensions of (end point - exact ODE end point), x_0 scale; the median "
        "per-sample error is the median over samples of each one's RMS over dimensions. "
        "[n]: the counted NFE where it is under the budget. (spacing): diffusers' timestep spacing of the best cell. "
        "*: a log-SNR-uniform diffusers option (`use_lu_lambdas`, `use_exponential_sigmas`), beyond the issue's list.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Build the problem, solve the reference, run every method at every budget, write and print the report."""
    import diffusers
    import scipy

    args = parse_args(argv)
    budgets = sorted(set(args.nfe))
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    mixture = GaussianMixture.draw(args.dim, generator)
    x_T = torch.randn(args.samples, args.dim, generator=generator, dtype=torch.float64)
    diffusion = GaussianDiffusion(get_beta_schedule("linear", NUM_TIMESTEPS), prediction="eps", clip_denoised=False)
    model = ExactEpsModel(mixture, diffusion)

    reference = exact_reference(mixture, diffusion, x_T)
    checks: dict[str, Any] = {
        "ode_evaluations": reference.ode_evaluations,
        "last_denoise_rms": reference.last_denoise_rms,
        "trained_range_vs_exact": rms(reference.trained_range - reference.exact),
    }
    for steps in CHECK_STEPS:
        x0 = run_ours(model, diffusion, x_T, "dpm++3m", "log_snr", steps)
        checks[f"ours_dpm++3m_log_snr_{steps}_steps"] = errors(x0, reference)
    print(f"reference: {json.dumps(checks)}")

    ours = []
    for nfe in budgets:
        for sampler in OUR_SAMPLERS:
            steps = steps_for_nfe(sampler, nfe)
            for schedule in TIMESTEP_SCHEDULES:
                model.calls = 0
                x0 = run_ours(model, diffusion, x_T, sampler, schedule, steps)
                ours.append(
                    {"sampler": sampler, "schedule": schedule, "nfe_budget": nfe, "steps": steps, "nfe": model.calls,
                     **errors(x0, reference)}
                )

    theirs = []
    for nfe in budgets:
        for kind in DIFFUSERS_SCHEDULERS:
            for spacing in SPACINGS:
                steps = diffusers_steps(kind, spacing, nfe)
                model.calls = 0
                x0, first = run_diffusers(model, x_T, kind, spacing, steps)
                theirs.append(
                    {"scheduler": kind.label, "class": kind.class_name, "options": kind.options, "spacing": spacing,
                     "nfe_budget": nfe, "num_inference_steps": steps, "nfe": model.calls, "first_timestep": first,
                     "float32_steps": kind.float32_steps, "in_issue_list": kind.listed, **errors(x0, reference)}
                )

    summary = summarize(ours, theirs, budgets)
    setup = (
        f"End-point error against the exact probability-flow ODE: Gaussian mixture, d = {args.dim}, {COMPONENTS} "
        f"components, {args.samples} samples, seed {args.seed}; linear schedule, T = {NUM_TIMESTEPS}; float64 "
        "(diffusers' own tables are float32). "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, scipy {scipy.__version__}."
    )
    table = markdown(ours, theirs, budgets, summary, setup)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.md").write_text(table)
    report = {
        "setup": {
            "dim": args.dim, "components": COMPONENTS, "samples": args.samples, "seed": args.seed, "nfe": budgets,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "scipy": scipy.__version__,
            "seconds": round(seconds, 1),
        },
        "reference": checks,
        "ours": ours,
        "diffusers": theirs,
        "summary": summary,
    }
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(json.dumps({**summary, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
