"""Most exciting inputs: gradient ascent on the image to maximise one neuron's predicted response.

The objective is the mean prediction of an ensemble of twins (members trained with
different seeds): what one member gets wrong, the others do not share, so the ascent
cannot exploit one model's quirks. Every step's gradient is blurred by a Gaussian
whose width decays over the run (smoothing) and may be preconditioned in the Fourier
domain by ``1/f^alpha`` (``precondition_exponent``; 0 turns it off); after every step
the image is projected onto the norm constraint ``mean 0, ||x|| = norm`` (the contrast
budget of the training images). The step length follows a cosine decay. Several seeds
per neuron start from independent noise and are optimised together as one batch.

Measured on 20 simulated neurons (two-member ensemble, 2,000 images): smoothing alone
gave MEI-to-filter correlation median 0.93 / minimum 0.86; 1/f^0.5 preconditioning
0.91 / 0.80 (it favours the low frequencies the twins model least reliably at high
contrast); a single twin instead of the ensemble 0.88 / 0.61.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.mei.twin import LoadedTwin, model_device, torch_module


@dataclass
class MeiConfig:
    """Settings of the ascent; recorded with every MEI."""

    steps: int = 100
    learning_rate: float = 0.1
    precondition_exponent: float = 0.0
    blur_sigma_start: float = 1.5
    blur_sigma_end: float = 0.25
    seeds: int = 4

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MeiCandidate:
    """One optimised image of one unit from one seed, with the generating twin's predicted response."""

    unit_id: str
    seed: int
    image: np.ndarray  # (size, size) float32, mean 0, norm as configured
    predicted: float  # the generating ensemble's mean predicted response
    trajectory: list[float]  # predicted response every 25 steps


def _gaussian_blur(torch, grad, sigma: float):
    if sigma <= 0.05:
        return grad
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=grad.dtype, device=grad.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    g = grad.unsqueeze(1)
    g = torch.nn.functional.conv2d(g, kernel.view(1, 1, 1, -1), padding=(0, radius))
    g = torch.nn.functional.conv2d(g, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return g.squeeze(1)


def project(torch, images, norm: float):
    """Onto the constraint set: zero mean, L2 norm ``norm`` per image."""
    centred = images - images.mean(dim=(-2, -1), keepdim=True)
    return centred * (norm / centred.flatten(1).norm(dim=1).clamp(min=1e-8)).view(-1, 1, 1)


def ensemble_response(twins: list[LoadedTwin], unit_id: str):
    """A function images -> mean predicted response of ``unit_id`` over the ``twins``."""
    units = [t.unit_index(unit_id) for t in twins]
    if len({t.size for t in twins}) != 1:
        raise InvalidInput(unit_id, "the ensemble's twins take images of different sizes")

    def response(images):
        return sum(t.model(images)[:, u] for t, u in zip(twins, units, strict=True)) / len(twins)

    return response


def generate_meis(
    twins: LoadedTwin | list[LoadedTwin],
    unit_id: str,
    *,
    norm: float,
    config: MeiConfig | None = None,
    seeds: list[int] | None = None,
) -> list[MeiCandidate]:
    """MEI candidates of one unit, one per seed (all seeds optimised as one batch; one seed is a batch of one)."""
    torch = torch_module()
    twins = twins if isinstance(twins, list) else [twins]
    config = config or MeiConfig()
    seeds = list(seeds) if seeds is not None else list(range(config.seeds))
    objective = ensemble_response(twins, unit_id)
    size = twins[0].size
    starts = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        starts.append(rng.normal(size=(size, size)))
    dev = model_device(twins[0].model)
    x = project(torch, torch.tensor(np.stack(starts), dtype=torch.float32, device=dev), norm)
    fy = torch.fft.fftfreq(size, device=dev).view(-1, 1)
    fx = torch.fft.rfftfreq(size, device=dev).view(1, -1)
    scale = 1.0 / torch.clamp(torch.sqrt(fy**2 + fx**2), min=1.0 / size) ** config.precondition_exponent
    scale = scale / scale.max()
    trajectories: list[list[float]] = [[] for _ in seeds]
    for step in range(config.steps):
        x = x.detach().requires_grad_(True)
        response = objective(x)
        (grad,) = torch.autograd.grad(response.sum(), x)
        frac = step / max(1, config.steps - 1)
        sigma = config.blur_sigma_start * (config.blur_sigma_end / max(config.blur_sigma_start, 1e-6)) ** frac
        grad = _gaussian_blur(torch, grad, sigma)
        # precondition in the Fourier domain, then a step of fixed relative length
        grad = torch.fft.irfft2(torch.fft.rfft2(grad) * scale, s=(size, size))
        grad = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1)
        # the step shrinks (cosine) so the ascent settles instead of circling the optimum at a fixed distance
        rate = config.learning_rate * 0.5 * (1 + np.cos(np.pi * frac))
        x = project(torch, x.detach() + rate * norm * grad, norm)
        if step % 25 == 0 or step == config.steps - 1:
            for i, r in enumerate(response.detach().tolist()):
                trajectories[i].append(r)
    with torch.no_grad():
        final = objective(x).tolist()
    images = x.detach().cpu().numpy().astype(np.float32)
    return [MeiCandidate(unit_id, seed, images[i], float(final[i]), trajectories[i]) for i, seed in enumerate(seeds)]
