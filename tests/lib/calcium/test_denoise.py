"""Noise2Void denoising raises the SNR of a simulated stack against its noiseless truth."""

import numpy as np
import pytest
import tifffile
from labpipe.calcium.denoise import denoise_stack
from labpipe.calcium.evaluate import snr_db
from labpipe.calcium.scanimage import read_scan_info
from labpipe.calcium.settings import DenoiseSettings
from labpipe.calcium.simulate import Recording, RecordingSpec, write_recording


@pytest.mark.slow
def test_denoising_raises_snr_and_keeps_the_stack_and_its_header(tmp_path):
    spec = RecordingSpec(frames=120, height=64, width=64, cells=8, photons=3, seed=5)
    write_recording(tmp_path / "rec.tif", spec)
    result = denoise_stack(tmp_path / "rec.tif", tmp_path / "out" / "denoised.tif", DenoiseSettings.small())
    denoised = tifffile.imread(result.path)
    clean = Recording(spec).clean_frames(0, spec.frames)
    noisy = tifffile.imread(tmp_path / "rec.tif").astype(np.float32)
    gain = snr_db(denoised, clean) - snr_db(noisy, clean)
    assert gain > 2.0, f"SNR gain {gain:.1f} dB"
    assert result.noise_after < 0.7 * result.noise_before
    info = read_scan_info(result.path)  # ScanImage's header travels with the denoised stack
    assert (info.frames, info.frame_rate, info.metadata_source) == (120, 30.0, "scanimage")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["denoised.tif"]  # nothing half-written beside it
