"""The simulated lab around the MEI loop: natural stimuli on the rig, the first recording, MEI recordings.

Used by the demo, the flow tests and ``labpipe mei simulate``. Everything goes through
the real paths: stimulus sets are written to the rig's stimulus folder and registered,
recordings are dropped into the setup's staging folder as ordinary session folders,
and only ingest brings them into the share and the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from labpipe.mei.bench import Recording, record_session
from labpipe.mei.neurons import SimulatedPopulation, pink_noise, simulate_population
from labpipe.mei.stimuli import StimulusSetFiles, read_stimulus_set, register_stimulus_set, write_stimulus_set


@dataclass
class SimulatedLab:
    population: SimulatedPopulation
    natural: StimulusSetFiles
    recording: Recording


def start_lab(
    db,
    stimulus_folder: Path,
    staging: Path,
    *,
    animal_id: str = "ANM-3001",
    n_units: int = 20,
    n_images: int = 2000,
    seed: int = 0,
    setup: str = "bench2p1",
    date: dt.date | None = None,
) -> SimulatedLab:
    """A natural stimulus set on the rig (registered) and a first recording of it, waiting in staging."""
    population = simulate_population(animal_id, n_units, seed=seed)
    natural = write_stimulus_set(stimulus_folder, pink_noise(n_images, population.size, seed=seed + 1), kind="natural")
    register_stimulus_set(db, natural)
    recording = record_session(
        staging, population, [(natural, 1, None)], setup=setup, date=date or dt.date.today(), seed=seed + 2
    )
    return SimulatedLab(population, natural, recording)


def record_meis(
    staging: Path,
    population: SimulatedPopulation,
    mei_set_folder: Path,
    natural: StimulusSetFiles,
    *,
    mei_repeats: int = 10,
    natural_images: int = 500,
    seed: int = 10,
    setup: str = "bench2p1",
    date: dt.date | None = None,
) -> Recording:
    """bench2p1 shows the exported MEIs (repeated) among natural images; the session lands in staging."""
    meis = read_stimulus_set(mei_set_folder)
    return record_session(
        staging,
        population,
        [(meis, mei_repeats, None), (natural, 1, natural_images)],
        setup=setup,
        date=date or dt.date.today(),
        seed=seed,
    )
