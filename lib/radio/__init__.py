"""The radio lifecycle (DSA-110).

Part 1, streaming and conversion: ``instrument`` (site, band, array, beam), ``naming``, ``tree`` (the
radio folders), ``simulate`` (the simulated instrument), ``calibrators``, ``schema`` and ``stream``
(files -> groups -> states), ``uvh5`` (h5py reads, per-subband phasing), ``metadata`` (pyuvdata's
phasing), ``ms`` (the casacore writer), ``convert`` (one group -> one MS), ``quicklook``.
Part 2, calibration, imaging, mosaics and QA, is in the other modules. pyuvdata and python-casacore
are the ``radio`` extra; modules import them where needed.
"""
