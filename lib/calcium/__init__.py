"""Two-photon calcium imaging: ScanImage stacks, denoising, suite2p, spike inference (ADAMACS cpu and gpu pools)."""
