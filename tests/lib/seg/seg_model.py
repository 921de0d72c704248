"""One tiny nnU-Net model per test session, shared by tests/lib/seg and tests/flows/test_segment.py.

Trained through labpipe's real path (dataset -> nnU-Net's own planning and
preprocessing -> the short trainer found through nnUNet_extTrainer, fold all)
on 4 simulated 48^3 tomograms, 1 epoch of 2 iterations, tiny network plans.
It lives in the session's $LABPIPE_HOME layout, where the flows look for it.
``trained_tiny_model`` is cached per process, so the session trains once.
"""

from __future__ import annotations

import functools
from pathlib import Path

from labpipe.layout import Layout
from labpipe.seg.nnunet import ModelInfo, TrainingCase, train_model
from labpipe.seg.simulate import LABELS, simulate_training_set

MODEL = "tiny-test"


@functools.cache
def trained_tiny_model(home: Path) -> ModelInfo:
    roots = Layout.default(home).ensure()
    pairs = simulate_training_set(roots.tomograms / "training" / MODEL, count=4, shape=(48, 48, 48))
    report = train_model(
        [TrainingCase(a, b) for a, b in pairs],
        name=MODEL,
        layout=roots,
        label_names=LABELS,
        network="tiny",
        epochs=1,
        iterations=2,
        device="cpu",
    )
    return report.model
