"""Ingest summaries appended to users' RSpace notebook entries, against a loopback stand-in.

RSpace is a cloud service that cannot run here: ``standins.rspace_app`` implements the
documented endpoints the real ``rspace-client`` calls for ``append_content``
(``GET``/``PUT /api/v1/documents/{id}``, apiKey header).
"""

import pytest
from labpipe.ingest.run import ingest_share
from labpipe.ingest.simulate import simulate_share
from labpipe.records.pyrat import ServiceUnavailable
from labpipe.records.rspace import post_summary, summaries_of
from labpipe.records.settings import RSpaceSettings

from tests.lib.records.standins import API_KEY, rspace_app, serve


def _document(doc_id: int) -> dict:
    return {
        "id": doc_id,
        "globalId": f"SD{doc_id}",
        "name": "Imaging log",
        "form": {"id": 3},
        "fields": [{"id": doc_id * 10, "name": "Data", "content": "<p>Earlier notes.</p>"}],
    }


def test_each_configured_users_session_summary_is_appended_to_their_entry(lab_db, tmp_path):
    simulate_share(tmp_path / "share", sessions_per_user=2, malformed=False, users={"alice": "AB", "bob": "BC"})
    report = ingest_share(lab_db, tmp_path / "share")
    documents = {101: _document(101)}
    with serve(rspace_app(documents)) as url:
        settings = RSpaceSettings(url=url, api_key=API_KEY, entries={"alice": "SD101"})
        posted = [post_summary(settings, summary) for summary in summaries_of(report)]
    assert sorted(p for p in posted if p) == ["SD101", "SD101"] and posted.count(None) == 2  # bob has no entry
    content = documents[101]["fields"][0]["content"]
    assert content.startswith("<p>Earlier notes.</p>")
    alice = [s for s in report.sessions if s["username"] == "alice"]
    assert all(s["session_id"] in content for s in alice) and "imaging: 1" in content and "succeeded" in content


def test_without_configuration_nothing_is_posted_and_a_failure_is_named(tmp_path):
    from labpipe.records.rspace import SessionSummary

    summary = SessionSummary("alice", "AAAA1111", "alice/x", 1, 2, {"imaging": 1}, "succeeded")
    assert post_summary(None, summary) is None
    with serve(rspace_app({})) as url:
        settings = RSpaceSettings(url=url, api_key=API_KEY, entries={"alice": "SD404"})
        with pytest.raises(ServiceUnavailable, match="could not append to document SD404"):
            post_summary(settings, summary)
