"""The desktop client of the segmentation service: a napari plugin (``napari.yaml``, npe2).

``widget.SegmentationWidget`` is the dock widget (Plugins > labpipe > Segmentation service). It needs the
``napari`` extra (napari, a Qt 6 binding, websockets); the network code is ``labpipe.seg.client``, shared with
``labpipe seg submit``.
"""
