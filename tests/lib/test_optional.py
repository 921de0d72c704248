"""Optional dependencies: a missing package names itself, what needed it and the extra that installs it."""

from __future__ import annotations

import pytest
from labpipe.errors import LabpipeError
from labpipe.optional import MissingDependency, require


def test_a_missing_package_names_the_extra_and_the_purpose():
    with pytest.raises(MissingDependency) as caught:
        require("labpipe_no_such_package", "radio", "RFI flagging")
    error = caught.value
    assert isinstance(error, LabpipeError) and isinstance(error, ImportError)
    assert error.subject == "labpipe_no_such_package" and "RFI flagging" in error.problem
    assert error.hint == "pip install 'labpipe[radio]'"


def test_an_installed_package_is_returned():
    assert require("json", "dev", "tests").dumps([1]) == "[1]"
    assert require("os.path", "dev", "tests").basename("/a/b") == "b"
