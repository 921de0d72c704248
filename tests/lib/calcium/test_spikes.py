"""Spike inference against simulated truth: the CASCADE-style network and suite2p's OASIS."""

import numpy as np
import pytest
import torch
from labpipe.calcium.evaluate import rate_correlation
from labpipe.calcium.settings import SpikeSettings
from labpipe.calcium.spikes import RECEPTIVE_FIELD, ground_truth, model_for, oasis, spike_net


def test_the_network_sees_cascades_64_frame_window_centred_on_each_time_point():
    torch.manual_seed(0)
    net = spike_net().eval()
    trace = torch.randn(1, 1, 300, requires_grad=True)
    out = net(trace)
    assert out.shape[-1] == 300 - RECEPTIVE_FIELD + 1  # valid convolution: one output per full window
    out[0, 0, 100].backward()
    seen = np.flatnonzero(trace.grad[0, 0].numpy())
    assert (seen.min(), seen.max()) == (100, 100 + RECEPTIVE_FIELD - 1)  # window t-32..t+31 once padded


@pytest.mark.slow
def test_a_small_model_infers_spike_rates_and_is_cached(tmp_path):
    settings = SpikeSettings.small()
    model = model_for(15.0, 2.0, settings, tmp_path)
    assert model.losses[-1] < model.losses[0]
    dff, spikes = ground_truth(np.random.default_rng(7), 30, 15 * 60, 15.0, 2.0, 1.0)
    cascade = rate_correlation(model.predict(dff), spikes, 15.0)
    baseline = rate_correlation(np.abs(np.gradient(dff, axis=1)), spikes, 15.0)  # the naive derivative
    assert cascade > 0.6 and cascade > baseline
    assert rate_correlation(oasis(dff, 15.0, 1.0), spikes, 15.0) > 0.6
    cached = list(tmp_path.glob("cascade-15Hz-nu2-*.pt"))
    assert len(cached) == 1 and model_for(15.0, 2.1, settings, tmp_path).losses == model.losses  # reused, not retrained
