"""`labpipe up` registers the block types and saves `default` documents only where none exist."""

import pytest
from labpipe.blocks import DaskCluster
from labpipe.config import get_settings
from labpipe.deployments.platform import register_blocks
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.exceptions import ObjectNotFound

SLUG = DaskCluster.get_block_type_slug()


@pytest.fixture
def restore_default_dask_cluster():
    """The session server's `default` DaskCluster document as it was before the test (or none)."""
    with get_client(sync_client=True) as client:
        try:
            before = client.read_block_document_by_name("default", SLUG).data
        except ObjectNotFound:
            before = None
    yield
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name("default", SLUG)
        if before is None:
            client.delete_block_document(document.id)
        else:
            client.update_block_document(document.id, BlockDocumentUpdate(data=before, merge_existing_data=False))


def test_a_default_document_that_no_longer_loads_is_left_for_the_user(restore_default_dask_cluster):
    """A `default` document that fails validation (say, edited by hand or written by an older labpipe) is the
    user's configuration: `up` must not replace it with the built-in default (here: a LocalCluster)."""
    DaskCluster(address="tcp://scheduler.lab:8786").save("default", overwrite=True)
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name("default", SLUG)
        stale = {**document.data, "n_workers": "four"}
        client.update_block_document(document.id, BlockDocumentUpdate(data=stale, merge_existing_data=False))

    registered = register_blocks(get_settings())

    assert SLUG in registered
    with get_client(sync_client=True) as client:
        kept = client.read_block_document_by_name("default", SLUG).data
    assert kept["address"] == "tcp://scheduler.lab:8786" and kept["n_workers"] == "four"
