"""Training and MEI loop (ADAMACS + SLEAP-RTC): a digital twin trained on recorded responses, its most exciting
inputs shown on the rig, and the recordings made with them linked back for the next round.

- ``twin`` / ``dataset`` / ``training``: the twin (a small CNN), its training data from the lab database, one
  training round that evaluates and publishes the model to the registry (``labpipe.registry``).
- ``generate`` / ``loop``: MEIs by gradient ascent, then scored and exported as a stimulus set.
- ``stimuli``: stimulus sets on disk (ids, manifest) and their database records; ``link``: scans linked to them.
- ``schema``: the ``<prefix>_mei`` tables; ``plots``: figures for run artifacts.
- ``neurons`` / ``bench`` / ``simulate`` / ``quality``: the simulated lab (neurons, bench2p1 rig) and the loop
  measured against its ground truth.

torch is the ``mei`` extra; ``twin`` imports it behind a guard that says how to install it.
"""
