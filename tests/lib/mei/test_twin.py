"""The twin and the MEI ascent on small problems: gradients, the single-image path, resume, the optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from labpipe.errors import InvalidInput
from labpipe.mei.generate import MeiConfig, generate_meis
from labpipe.mei.neurons import image_norm, pink_noise, simulate_population
from labpipe.mei.twin import (
    LoadedTwin,
    TrainingInterrupted,
    TwinConfig,
    build_twin,
    load_twin,
    save_twin,
    train_twin,
)

SMALL = TwinConfig(channels=4, kernels=(5, 3, 3), epochs=3, batch_size=32)


@pytest.fixture(scope="module")
def population():
    return simulate_population("ANM-T1", 6, size=16, seed=3)


def _eval_twin(n_units=6, size=16, config=SMALL):
    """A twin with non-trivial BatchNorm statistics, in eval mode, as MEIs use it."""
    torch.manual_seed(0)
    model = build_twin(n_units, size, config)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, size, size) * 2 + 0.3)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _einsum_forward(model):
    """The readout written with einsum: the trap the issue measured (kept here only to test against)."""
    ro = model.readout

    def forward(images):
        features = model.core(images.unsqueeze(1))
        b, c = features.shape[:2]
        drive = torch.einsum("bcs,ns,nc->bn", features.reshape(b, c, -1), ro.spatial, ro.features) + ro.bias
        return torch.nn.functional.softplus(drive)

    return forward


def _input_gradient(forward, images, unit):
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(forward(x)[:, unit].sum(), x)
    return grad


def test_single_image_gradient_equals_the_batched_one():
    model = _eval_twin()
    images = torch.randn(2, 16, 16)
    single = _input_gradient(model, images[:1], 2)[0]
    batched = _input_gradient(model, images, 2)[0]
    assert torch.allclose(single, batched, rtol=1e-4, atol=1e-6)
    # and against a finite difference along a random direction (the gradient is right, not just consistent)
    direction = torch.randn(16, 16)
    eps = 1e-2
    with torch.no_grad():
        plus = model((images[:1] + eps * direction).double().float())[0, 2]
        minus = model((images[:1] - eps * direction).float())[0, 2]
    numeric = float((plus - minus) / (2 * eps))
    assert numeric == pytest.approx(float((single * direction).sum()), rel=2e-2, abs=1e-4)


def test_the_einsum_readout_trap_is_real_on_this_torch():
    """Documents why the readout uses matmul: einsum + BatchNorm2d (eval) gives a wrong single-image gradient."""
    model = _eval_twin()
    forward = _einsum_forward(model)
    images = torch.randn(2, 16, 16)
    single = _input_gradient(forward, images[:1], 2)[0]
    batched = _input_gradient(forward, images, 2)[0]
    reference = _input_gradient(model, images[:1], 2)[0]
    assert torch.allclose(batched, reference, rtol=1e-4, atol=1e-6)  # batched einsum is right
    if torch.allclose(single, reference, rtol=1e-3, atol=1e-5):
        pytest.skip(f"torch {torch.__version__} no longer shows the einsum single-image trap")
    assert float((single - reference).norm() / reference.norm()) > 0.1


def test_one_seed_alone_gives_the_same_mei_as_in_a_batch():
    model = _eval_twin()
    twin = LoadedTwin(model, [f"u{i:03d}" for i in range(6)], "ANM-T1", 16, {})
    config = MeiConfig(steps=40)
    batch = generate_meis(twin, "u001", norm=image_norm(16), config=config, seeds=[0, 1, 2])
    alone = generate_meis(twin, "u001", norm=image_norm(16), config=config, seeds=[1])
    assert np.allclose(alone[0].image, batch[1].image, atol=1e-4)


class _TrueNeurons(torch.nn.Module):
    """The simulated neurons themselves as a differentiable model: the ascent must find the analytic optimum."""

    def __init__(self, population) -> None:
        super().__init__()
        n = len(population.unit_ids)
        self.w = torch.nn.Parameter(torch.tensor(population.filters.reshape(n, -1)), requires_grad=False)
        self.gain, self.bias = torch.tensor(population.gain), torch.tensor(population.bias)
        self.scale = population.scale

    def forward(self, images):
        return self.scale * torch.nn.functional.softplus(self.gain * (images.flatten(1) @ self.w.T) + self.bias)


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]], ids=["single-image", "batch"])
def test_the_ascent_reaches_the_analytic_optimum_under_the_norm_constraint(population, seeds):
    twin = LoadedTwin(_TrueNeurons(population), population.unit_ids, population.animal_id, 16, {})
    norm = image_norm(16)
    for unit in population.unit_ids[:3]:
        for mei in generate_meis(twin, unit, norm=norm, seeds=seeds):
            i = population.unit_ids.index(unit)
            assert abs(mei.image.mean()) < 1e-4 and np.linalg.norm(mei.image) == pytest.approx(norm, rel=1e-4)
            assert np.corrcoef(mei.image.ravel(), population.filters[i].ravel())[0, 1] > 0.97
            rate = population.rates(mei.image[None])[0, i]
            assert rate >= 0.95 * population.optimal_rate(norm)[i]


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_as_an_unbroken_one(population, tmp_path):
    images = pink_noise(300, 16, seed=1)
    responses = population.respond(images, seed=2)
    with pytest.raises(TrainingInterrupted):
        train_twin(images, responses, SMALL, tmp_path / "run", stop_after_epoch=1)
    resumed_model, resumed = train_twin(images, responses, SMALL, tmp_path / "run")
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    unbroken_model, unbroken = train_twin(images, responses, SMALL, tmp_path / "unbroken")
    assert unbroken.resumed_from_epoch == 0
    for key, value in unbroken_model.state_dict().items():
        assert torch.allclose(value.float(), resumed_model.state_dict()[key].float(), atol=1e-5), key
    # a different data set never resumes someone else's checkpoint
    _, fresh = train_twin(images[:200], responses[:200], SMALL, tmp_path / "run")
    assert fresh.resumed_from_epoch == 0


def test_saved_twin_loads_with_its_units(population, tmp_path):
    images = pink_noise(100, 16, seed=1)
    model, _ = train_twin(images, population.respond(images), SMALL, tmp_path / "run")
    folder = save_twin(
        model, tmp_path / "m", unit_ids=population.unit_ids, animal_id="ANM-T1", config=SMALL, extra={"norm": 16.0}
    )
    twin = load_twin(folder)
    assert twin.unit_ids == population.unit_ids and twin.size == 16 and twin.meta["norm"] == 16.0
    with pytest.raises(InvalidInput, match="not a unit of this twin"):
        twin.unit_index("u999")
    with pytest.raises(InvalidInput, match="twin.json missing"):
        load_twin(tmp_path)


def test_bad_training_input_is_named(tmp_path):
    with pytest.raises(InvalidInput, match="square images"):
        train_twin(np.zeros((10, 16, 8)), np.zeros((10, 2)), SMALL, tmp_path)
    with pytest.raises(InvalidInput, match="9 rows for 10 images"):
        train_twin(np.zeros((10, 16, 16)), np.zeros((9, 2)), SMALL, tmp_path)
