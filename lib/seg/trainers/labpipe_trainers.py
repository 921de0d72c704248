"""nnU-Net trainers labpipe adds; nnU-Net finds them through ``nnUNet_extTrainer`` (this folder).

This module is imported by nnU-Net as a top-level module, so it imports nothing
from labpipe. ``nnUNetTrainerLabpipeShort`` is nnU-Net's trainer with few epochs
and iterations (read from the environment, so one class serves every size):
tests and the demo train a tiny model on simulated data in seconds on a CPU.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerLabpipeShort(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming convention
    """nnUNetTrainer with ``LABPIPE_SEG_EPOCHS`` epochs of ``LABPIPE_SEG_ITERATIONS`` iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("LABPIPE_SEG_EPOCHS", "1"))
        self.num_iterations_per_epoch = int(os.environ.get("LABPIPE_SEG_ITERATIONS", "2"))
        self.num_val_iterations_per_epoch = int(os.environ.get("LABPIPE_SEG_VAL_ITERATIONS", "1"))

    def perform_actual_validation(self, save_probabilities: bool = False):
        # fold "all" validates on its own training cases: minutes of sliding windows that say nothing
        if os.environ.get("LABPIPE_SEG_FINAL_VALIDATION", "0") == "1":
            super().perform_actual_validation(save_probabilities)
