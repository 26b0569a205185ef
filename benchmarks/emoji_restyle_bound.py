"""How far the emoji data itself carries a held-out (emoji, style) pair: restylers that are *given* the
picture of the style the emoji was seen in, scored by the emoji evaluation's own judge.

    python benchmarks/emoji_restyle_bound.py [--model emoji32] [--steps 3000] [--hidden 1024] [--seed 0]

A text-to-image model asked for a held-out pair must draw a picture it never saw; the emoji judge
(:class:`~guided_diffusion.datasets.emoji_judge.EmojiJudge`: nearest real picture in 16x16 area-averaged
pixels) counts it right when the nearest of all real pictures is that emoji and it is nearer to the asked
style's picture than to the seen one. This script asks how often anything learned from the training data
can do that even with the seen picture in hand, so the model's figure can be read against it:

- *twins*: for every real picture, is the nearest other real picture the same emoji in the other style
  (how close two artists' drawings of one emoji are, in the judge's space);
- *identity*: the seen picture itself, unchanged (and the asked picture itself: the judge's ceiling, short
  of 100% only where two emoji share a picture);
- restylers fitted on the emoji the model saw in both styles, mapping one style's 16x16 features to the
  other's: ridge regression, kernel ridge (RBF, on the difference), and a residual MLP (mirroring
  augmentation), each on the model's held-out pairs; and the MLP on 262 of its own training emoji and on
  262 two-style emoji it was not fitted on, with a learning curve over how many emoji it is fitted on.

Every prediction is drawn as an image at the model's resolution (each 16x16 value over a block of pixels,
clamped to [-1, 1]) and read by the judge itself. Needs ``gd-data fetch emoji``. Prints a markdown table;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from samplers import cpu_name  # noqa: E402  (benchmarks/samplers.py)

from guided_diffusion import GuidedDiffusionPipeline  # noqa: E402
from guided_diffusion.datasets.emoji import EMOJI_STYLES, make_emoji  # noqa: E402
from guided_diffusion.datasets.emoji_judge import EmojiJudge  # noqa: E402
from guided_diffusion.evaluation.emoji import read_training_pairs  # noqa: E402

Pairs = Sequence[tuple[str, str]]  # (name, asked style)
Restyler = Callable[[torch.Tensor, list[str]], torch.Tensor]  # (seen features [N, D], asked styles) -> [N, D]


def other_style(judge: EmojiJudge, name: str, style: str) -> str:
    """The style ``name`` has a picture in besides ``style`` (the emoji data has two styles)."""
    return next(s for s in EMOJI_STYLES if s != style and (name, s) in judge.index)


def seen_features(judge: EmojiJudge, pairs: Pairs) -> torch.Tensor:
    """``[N, D]``: the judge's features of each pair's picture in its other (seen) style."""
    return judge.features[[judge.index[(n, other_style(judge, n, s))] for n, s in pairs]]


def score(judge: EmojiJudge, features: torch.Tensor, pairs: Pairs, resolution: int) -> dict[str, float]:
    """The judge's verdicts on ``features [N, 16*16*3]`` drawn as images: top-1 / top-5 own emoji, the
    asked style among the top-1 hits, and both right (top-1 and asked style) among all."""
    side = judge.size
    small = features.float().view(-1, 3, side, side)
    images = F.interpolate(small, scale_factor=resolution // side, mode="nearest").clamp(-1, 1)
    v = judge.judge(images, [n for n, _ in pairs], [s for _, s in pairs])
    hits = int(v.top1.sum())
    both = int((v.top1 & v.style_right).sum())
    return {"top1": hits / len(pairs), "top5": float(v.top5.double().mean()), "style_of_hits": both / max(hits, 1),
            "both": both / len(pairs)}


def twin_rate(judge: EmojiJudge) -> dict[str, float]:
    """For every real picture of an emoji drawn in both styles: is its nearest other real picture its
    twin (top-1), or among the 5 nearest (top-5)."""
    distances = torch.cdist(judge.features, judge.features)
    distances.fill_diagonal_(float("inf"))
    order = distances.topk(5, largest=False).indices.tolist()
    rows = [i for i, (n, s) in enumerate(zip(judge.names, judge.styles)) if any((n, t) in judge.index for t in EMOJI_STYLES if t != s)]
    top1 = sum(judge.names[order[i][0]] == judge.names[i] for i in rows) / len(rows)
    top5 = sum(any(judge.names[j] == judge.names[i] for j in order[i]) for i in rows) / len(rows)
    return {"pictures": len(rows), "top1": top1, "top5": top5}


def training_arrays(judge: EmojiJudge, names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per target style: (features of each emoji's other-style picture, of its target-style picture), ``[N, D]`` each."""
    return {
        s: (judge.features[[judge.index[(n, other_style(judge, n, s))] for n in names]], judge.features[[judge.index[(n, s)] for n in names]])
        for s in EMOJI_STYLES
    }


def per_style(fits: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Restyler:
    """One restyler from one fitted map per target style."""
    def restyle(x: torch.Tensor, styles: list[str]) -> torch.Tensor:
        out = torch.empty_like(x)
        for s, fit in fits.items():
            rows = [i for i, t in enumerate(styles) if t == s]
            if rows:
                out[rows] = fit(x[rows])
        return out
    return restyle


def ridge(arrays: dict[str, tuple[torch.Tensor, torch.Tensor]], penalty: float) -> Restyler:
    """Linear maps with a bias, least squares with an L2 ``penalty``, one per target style."""
    def fit(x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        xb = F.pad(x, (0, 1), value=1.0)
        w = torch.linalg.solve(xb.T @ xb + penalty * torch.eye(xb.shape[1], dtype=x.dtype), xb.T @ y)
        return lambda q: F.pad(q, (0, 1), value=1.0) @ w
    return per_style({s: fit(x, y) for s, (x, y) in arrays.items()})


def kernel_ridge(arrays: dict[str, tuple[torch.Tensor, torch.Tensor]], width: float, penalty: float) -> Restyler:
    """Kernel ridge regression on the difference between the styles' features, an RBF kernel whose
    squared length is ``width`` times the median squared distance between training pictures."""
    def fit(x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        gamma = 1.0 / (width * torch.cdist(x, x).median() ** 2)
        kernel = torch.exp(-gamma * torch.cdist(x, x) ** 2)
        alpha = torch.linalg.solve(kernel + penalty * torch.eye(len(x), dtype=x.dtype), y - x)
        return lambda q: q + torch.exp(-gamma * torch.cdist(q, x) ** 2) @ alpha
    return per_style({s: fit(x, y) for s, (x, y) in arrays.items()})


def mlp(judge: EmojiJudge, arrays: dict[str, tuple[torch.Tensor, torch.Tensor]], hidden: int, steps: int, seed: int) -> Restyler:
    """A residual MLP (two hidden layers of ``hidden``, GELU) from a picture's features and a one-hot
    target style to the difference between the styles' features; AdamW (1e-3, weight decay 1e-3),
    ``steps`` batches of 128, each example mirrored left-right half of the time."""
    styles = sorted(arrays)
    side, dim = judge.size, next(iter(arrays.values()))[0].shape[1]
    x = torch.cat([arrays[s][0] for s in styles]).float()
    y = torch.cat([arrays[s][1] for s in styles]).float() - x
    onehot = torch.cat([F.one_hot(torch.full((len(arrays[s][0]),), k), len(styles)) for k, s in enumerate(styles)]).float()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(dim + len(styles), hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim)
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, 3, side, side).flip(-1).reshape(-1, dim)

    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,), generator=generator)
        flip = torch.rand(128, generator=generator) < 0.5
        xb, yb = x[batch], y[batch]
        xb = torch.where(flip[:, None], mirror(xb), xb)
        yb = torch.where(flip[:, None], mirror(yb), yb)
        loss = F.mse_loss(net(torch.cat([xb, onehot[batch]], 1)), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def restyle(q: torch.Tensor, asked: list[str]) -> torch.Tensor:
        code = F.one_hot(torch.tensor([styles.index(s) for s in asked]), len(styles)).float()
        with torch.no_grad():
            return (q.float() + net(torch.cat([q.float(), code], 1))).double()
    return restyle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="emoji32", help="an emoji pipeline folder or shipped model name (its training_data.json)")
    parser.add_argument("--emoji-root", default=None, help="the fetched emoji packages (default: gd-data's cache)")
    parser.add_argument("--steps", type=int, default=3000, help="MLP updates")
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    pipe = GuidedDiffusionPipeline.from_pretrained(args.model)
    pairs = read_training_pairs(pipe.folder)
    resolution = pipe.unet.config.image_size
    judge = EmojiJudge(make_emoji("all", root=args.emoji_root, resolution=resolution))
    held = [(n, s) for n, s, _ in pairs["held_out_pairs"]]
    held_names = {n for n, _ in held}
    two_style = sorted({n for n, _, _ in pairs["train_pairs"] if n not in held_names})
    arrays = training_arrays(judge, two_style)
    x_held = seen_features(judge, held)

    rows: list[tuple[str, str, dict[str, float]]] = []

    def add(label: str, on: str, restyler: Restyler, restyled: Pairs, inputs: torch.Tensor) -> None:
        rows.append((label, on, score(judge, restyler(inputs, [s for _, s in restyled]), restyled, resolution)))

    asked_pictures = judge.features[[judge.index[pair] for pair in held]]
    add("the asked picture itself (the judge's ceiling)", "held-out pairs", lambda q, _: asked_pictures, held, x_held)
    add("identity (the seen picture)", "held-out pairs", lambda q, _: q, held, x_held)
    for penalty in (1.0, 10.0, 100.0):
        add(f"ridge, penalty {penalty:g}", "held-out pairs", ridge(arrays, penalty), held, x_held)
    for width, penalty in ((1.0, 0.01), (1.0, 0.1), (0.5, 0.1)):
        add(f"kernel ridge, width {width:g}, penalty {penalty:g}", "held-out pairs", kernel_ridge(arrays, width, penalty), held, x_held)
    add(f"MLP {args.hidden}, {args.steps} updates", "held-out pairs", mlp(judge, arrays, args.hidden, args.steps, args.seed), held, x_held)

    rng = random.Random(args.seed)
    check = sorted(rng.sample(two_style, min(262, len(two_style) // 5)))
    fitted = sorted(set(two_style) - set(check))
    unseen = [(n, rng.choice(EMOJI_STYLES)) for n in check]
    own = [(n, rng.choice(EMOJI_STYLES)) for n in fitted[: len(check)]]
    for share in (0.25, 0.5, 1.0):
        names = fitted[: int(len(fitted) * share)]
        restyler = mlp(judge, training_arrays(judge, names), args.hidden, args.steps, args.seed)
        add(f"MLP fitted on {len(names)} emoji", f"{len(unseen)} two-style emoji it was not fitted on", restyler, unseen, seen_features(judge, unseen))
        if share == 1.0:
            add(f"MLP fitted on {len(names)} emoji", f"{len(own)} of the emoji it was fitted on", restyler, own, seen_features(judge, own))

    twins = twin_rate(judge)
    print(f"# What the emoji data teaches about a held-out pair ({args.model}; {cpu_name()}; {time.perf_counter() - started:.0f} s)\n")
    print(f"Twins: for {twins['pictures']} real pictures of emoji drawn in both styles, the nearest other real picture is the "
          f"same emoji in the other style {100 * twins['top1']:.1f}% of the time (among the 5 nearest: {100 * twins['top5']:.1f}%).\n")
    print("| restyler | scored on | top-1 own emoji | top-5 | asked style, of top-1 hits | both right, of all |")
    print("|---|---|---:|---:|---:|---:|")
    for label, on, r in rows:
        print(f"| {label} | {on} | {100 * r['top1']:.1f}% | {100 * r['top5']:.1f}% | {100 * r['style_of_hits']:.1f}% | {100 * r['both']:.1f}% |")
    print(json.dumps({"model": args.model, "cpu": cpu_name(), "twins": twins,
                      "rows": [{"restyler": label, "scored_on": on, **r} for label, on, r in rows]}))


if __name__ == "__main__":
    main()
