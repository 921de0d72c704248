"""nnU-Net trainer classes; this folder is what ``nnUNet_extTrainer`` points at."""
