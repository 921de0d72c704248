"""The loop measured against ground truth (simulated neurons only): twin, MEIs, and their effect.

- twin: correlation of its prediction with the noise-free rate, per unit, on held-out images;
- MEI: correlation of the chosen MEI with the unit's true filter;
- effect: the true rate at the MEI as a fraction of the analytic optimum at the same norm,
  and against the unit's rates to natural-like images (mean and maximum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from labpipe.mei.neurons import SimulatedPopulation, pink_noise


@dataclass
class UnitQuality:
    unit_id: str
    mei_filter_corr: float
    fraction_of_optimum: float
    rate_at_mei: float
    optimal_rate: float
    natural_mean_rate: float
    natural_max_rate: float

    def as_dict(self) -> dict:
        return asdict(self)


def mei_quality(
    population: SimulatedPopulation, meis: dict[str, np.ndarray], *, n_natural: int = 1000
) -> list[UnitQuality]:
    """Per unit: how good its MEI is for the true neuron (``meis``: unit id -> image)."""
    natural = population.rates(pink_noise(n_natural, population.size, seed=4242))
    out = []
    for unit_id, image in meis.items():
        i = population.unit_ids.index(unit_id)
        norm = float(np.linalg.norm(image))
        rate = float(population.rates(image[None])[0, i])
        optimum = float(population.optimal_rate(norm)[i])
        corr = float(np.corrcoef(image.ravel(), population.filters[i].ravel())[0, 1])
        out.append(
            UnitQuality(
                unit_id, corr, rate / optimum, rate, optimum, float(natural[:, i].mean()), float(natural[:, i].max())
            )
        )
    return out


def summary(qualities: list[UnitQuality]) -> dict:
    corr = np.array([q.mei_filter_corr for q in qualities])
    frac = np.array([q.fraction_of_optimum for q in qualities])
    gain = np.array([q.rate_at_mei / max(q.natural_max_rate, 1e-9) for q in qualities])
    return {
        "units": len(qualities),
        "mei_filter_corr_median": float(np.median(corr)),
        "mei_filter_corr_min": float(corr.min()),
        "fraction_of_optimum_median": float(np.median(frac)),
        "fraction_of_optimum_min": float(frac.min()),
        "mei_over_best_natural_median": float(np.median(gain)),
    }


def twin_truth_correlation(population: SimulatedPopulation, predict, *, n_images: int = 500) -> np.ndarray:
    """Per unit: correlation of ``predict(images)`` (n, units) with the noise-free rates on fresh images."""
    from labpipe.mei.twin import per_unit_correlation

    images = pink_noise(n_images, population.size, seed=777)
    return per_unit_correlation(predict(images), population.rates(images))
