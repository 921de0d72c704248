"""Pose estimation with DeepLabCut 3 (PyTorch engine): labelled frames -> model -> pose table.

- ``labelled``: DeepLabCut's own CollectedData files found, checked and fingerprinted.
- ``train``: a DeepLabCut project created (or reused), training dataset, network trained, evaluated.
- ``models``: trained models published to and resolved from the lab's model registry (``labpipe.registry``).
- ``video`` / ``preflight``: what a video is (frame rate, resolution, decodes) and the checks run before GPU time.
- ``analyze``: ``analyze_videos`` into a staging folder, read back per frame and bodypart.
- ``schema`` / ``populate``: the ``<prefix>_pose`` tables and the worker population over ingest's
  ``PoseEstimationTask`` rows.
- ``simulate``: videos of moving markers with known positions, and labelled frames cut from them.

DeepLabCut is imported only where it is needed (``labpipe.pose.dlc.deeplabcut()``), so the
rest imports without it.
"""
