"""Behaviour: Bpod trial files and Harp streams, aligned to imaging and camera frames through the sync signal."""
