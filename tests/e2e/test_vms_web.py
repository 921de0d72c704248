"""The allocator's web page in headless Chromium (Debian's package), driven over the DevTools protocol.

An admin tab watches the VM table; a user tab requests a VM; the admin tab
updates live (no reload) from the allocator's event stream; a second user is
told clearly that none is free. The VMs are real local client processes.
"""

from __future__ import annotations

import json
import uuid

import pytest
from labpipe.browser import Tab, chromium_path
from labpipe.browser import chromium as browser
from labpipe.vms.lifecycle import destroy_vms
from labpipe.vms.models import Role
from labpipe.vms.server import BackgroundAllocator
from labpipe.vms.settings import AllocatorSettings, LocalProvisionerSettings, VmLimits
from labpipe.vms.store import VmStore

CHROMIUM = chromium_path()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed (infra/apt-packages.txt)"),
]


class VmPage(Tab):
    """The allocator's page in one tab."""

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.until("document.readyState === 'complete' && !!document.getElementById('use-token')", "the page")

    def sign_in(self, token: str) -> None:
        self.js(f"document.getElementById('token').value = {json.dumps(token)}")
        self.js("document.getElementById('use-token').click()")
        self.until("document.getElementById('whoami').textContent.startsWith('signed in')", "the signed-in user")


@pytest.fixture
def chromium(tmp_path):
    with browser(tmp_path / "chromium-profile", log=tmp_path / "chromium.log") as new_tab:
        yield lambda: new_tab(VmPage)


@pytest.fixture
def served(embedded_target, tmp_path):
    settings = AllocatorSettings(
        local=LocalProvisionerSettings(root=tmp_path / "local-vms"),
        limits=VmLimits(gpu_check_interval=1, heartbeat_interval=1, silent_after=30),
    )
    store = VmStore(embedded_target, f"t{uuid.uuid4().hex[:10]}_vms")
    store.ensure_schema()
    allocator = BackgroundAllocator(store, settings)
    yield allocator, store
    destroy_vms(store, allocator.settings, [vm.id for vm in store.list()], reason="test teardown")
    allocator.close()
    store.drop_schema()
    store.close()


def test_admin_watches_live_while_a_user_requests_a_vm(served, chromium, tmp_path):
    allocator, store = served
    admin_token = store.issue_token(Role.admin)
    ada_token = store.issue_token(Role.user, email="ada@lab.org")
    bob_token = store.issue_token(Role.user, email="bob@lab.org")

    admin = chromium()
    admin.open(allocator.url)
    admin.sign_in(admin_token)
    assert admin.js("document.getElementById('admin-section').hidden") is False
    admin.js("document.getElementById('create-count').value = '1'; document.getElementById('create').click()")
    admin.until("document.getElementById('admin-result').textContent.startsWith('started')", "the create job")
    admin.until("!!document.querySelector('#vms tr[data-state=available]')", "a registered VM", timeout=60)
    admin.until("document.getElementById('live').textContent === '(live)'", "the live event stream")

    ada = chromium()
    ada.open(allocator.url)
    ada.sign_in(ada_token)
    assert ada.js("document.getElementById('admin-section').hidden") is True
    assert ada.js("document.getElementById('email').value") == "ada@lab.org"
    ada.js("document.getElementById('request').click()")
    assigned = ada.until("document.getElementById('result').dataset.hostname", "the assigned hostname")
    assert "Assigned " + assigned in ada.js("document.getElementById('result').textContent")
    (vm,) = store.list()
    assert vm.hostname == assigned and vm.owner == "ada@lab.org" and vm.state == "in_use"

    # the admin tab was not reloaded: the allocator's event stream brought the change
    admin.until("!!document.querySelector('#vms tr[data-state=in_use]')", "the claim, live")
    row = admin.js("document.querySelector('#vms tr[data-state=in_use]').innerText")
    assert assigned in row and "ada@lab.org" in row
    admin.screenshot(tmp_path / "vms-admin.png")

    bob = chromium()
    bob.open(allocator.url)
    bob.sign_in(bob_token)
    bob.js("document.getElementById('request').click()")
    refusal = bob.until(
        "document.getElementById('result').className === 'error' && document.getElementById('result').textContent",
        "the refusal",
    )
    assert "409" in refusal and "no VM is free" in refusal
    bob.js("document.getElementById('email').value = 'not an email'; document.getElementById('request').click()")
    invalid = bob.until("document.getElementById('result').textContent.includes('422') && "
                        "document.getElementById('result').textContent", "the 422")  # fmt: skip
    assert "email" in invalid

    ada.js("document.querySelector('button.release').click()")
    admin.until("!!document.querySelector('#vms tr[data-state=available]')", "the release, live")
    assert store.list()[0].owner is None
