"""The service's loopback fixtures (tests/lib/seg/service/conftest.py), shared with these client tests."""

from tests.lib.seg.service.conftest import job_service, segment_deployment, start_service  # noqa: F401
