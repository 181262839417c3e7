"""Deterministic synthetic triage traffic for the monitoring tests: one image per study.

The reference population, and the four shifts the issue names: exposure, a new manufacturer
for 30 % of studies, a lateral-heavy view mix and a prevalence rise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from governance.monitoring.drift import Reference, Window, score_quantiles

TAU = 0.5


@dataclass(frozen=True)
class Population:
    prevalence: float = 0.15
    exposure: float = 0.0  # added to the mean of the unit image
    new_manufacturer: float = 0.0  # fraction of studies from a manufacturer never seen
    views: tuple[float, float, float] = (0.6, 0.35, 0.05)  # PA, AP, LL
    manufacturers: dict[str, float] = field(
        default_factory=lambda: {"Acme": 0.5, "Bravo": 0.35, "Carm": 0.15}
    )


@dataclass
class Studies:
    labels: np.ndarray
    scores: np.ndarray
    columns: dict[str, np.ndarray]

    def window(self) -> Window:
        return Window(
            scores=self.scores,
            flags=self.scores >= TAU,
            categorical=self.categorical(),
            image=self.image(),
        )

    def categorical(self) -> dict[str, dict[str, int]]:
        names = ("manufacturer", "view_position", "modality", "sex", "age_band", "calling_ae")
        return {n: dict(Counter(self.columns[n].tolist())) for n in names}

    def image(self) -> dict[str, np.ndarray]:
        names = ("img_mean", "img_std", "img_frac_zero", "img_frac_one")
        return {n: self.columns[n] for n in names}


def draw(rng: np.random.Generator, n: int, population: Population | None = None) -> Studies:
    pop = population or Population()
    labels = rng.random(n) < pop.prevalence
    scores = np.where(labels, rng.beta(5, 2, n), rng.beta(2, 6, n))
    makers = list(pop.manufacturers)
    manufacturer = rng.choice(makers, n, p=list(pop.manufacturers.values())).astype(object)
    manufacturer[rng.random(n) < pop.new_manufacturer] = "Zeta"
    brightness = rng.normal(0.5 + pop.exposure, 0.05, n)
    columns = {
        "manufacturer": manufacturer,
        "view_position": rng.choice(["PA", "AP", "LL"], n, p=list(pop.views)),
        "modality": rng.choice(["CR", "DX"], n, p=[0.3, 0.7]),
        "sex": rng.choice(["F", "M"], n),
        "age_band": rng.choice(["18-39", "40-64", "65+"], n, p=[0.3, 0.4, 0.3]),
        "calling_ae": rng.choice(["PACS1", "PACS2"], n, p=[0.8, 0.2]),
        "img_mean": brightness,
        "img_std": rng.normal(0.22, 0.02, n),
        "img_frac_zero": rng.beta(2, 200, n),
        "img_frac_one": rng.beta(2, 400, n) * np.exp(8 * pop.exposure),
    }
    return Studies(labels, scores, columns)


def reference(
    rng: np.random.Generator, *, validation: int = 2000, baseline: int = 500
) -> Reference:
    val = draw(rng, validation)
    base = draw(rng, baseline)
    return Reference(
        score_quantiles=score_quantiles(val.scores),
        score_n=validation,
        categorical=base.categorical(),
        image=base.image(),
        baseline_studies=baseline,
    )
