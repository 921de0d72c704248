"""What users set for segmentation runs (the ``labpipe segmentation`` block in the Prefect UI)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SegmentationSettings(BaseModel):
    """Defaults of the segmentation flow; a flow parameter given explicitly wins."""

    model: str = Field("tiny", description="Model name under <models>/seg/ used when a run names none.")
    step_size: float = Field(
        0.5, gt=0, le=1, description="Sliding-window step as a fraction of the patch (nnU-Net: 0.5)."
    )
    mirroring: bool = Field(
        True, description="Test-time mirroring (8 passes per window in 3-D), as nnU-Net does by default."
    )
    workers: int | None = Field(
        None, ge=1, description="Dask workers for the windows; empty: one per GPU, or one per 2 cores on a CPU host."
    )
    device: str | None = Field(None, description="cuda, cuda:N or cpu; empty: cuda when torch sees a GPU.")
    preview_every: float = Field(5.0, ge=0, description="Seconds between previews while windows complete; 0: none.")
    preview_factor: int | None = Field(
        None, ge=1, description="Preview every N-th voxel (integer, so previews align); empty: 4, or 8 for big volumes."
    )
