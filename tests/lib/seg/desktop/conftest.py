"""The service's loopback fixtures (tests/lib/seg/service/conftest.py), shared with these client tests.

Triton (imported by torch's compiler) and Mesa's software OpenGL (napari's canvas here, no GPU) each carry their
own LLVM: when napari draws first and triton is imported later in the same process (the segment tests after
these), the process dies with a segmentation fault. Loaded in the other order they coexist (the full suite
imports torch long before these tests), so triton is imported here, before any window is drawn.
"""

import contextlib

with contextlib.suppress(ImportError):
    import triton  # noqa: F401

from tests.lib.seg.service.conftest import job_service, segment_deployment, start_service  # noqa: E402, F401
