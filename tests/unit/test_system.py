"""install's command runner: a command that cannot run is one clear error, not a traceback."""

import os

import pytest

from pvehook.errors import PvenatError
from pvehook.install.system import System


def test_a_command_found_but_not_executable_is_a_clear_error(tmp_path, monkeypatch):
    # what an unpacked .deb gives when its postinst's chmod was skipped
    tool = tmp_path / "ifquery"
    tool.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(tool, 0o644)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PvenatError) as e:
        System().run(str(tool), "-a")
    assert e.value.code == "host"
    assert "could not be run: Permission denied" in e.value.message


def test_a_missing_command_names_the_path_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PvenatError) as e:
        System().run("ifquery", "-a")
    assert e.value.code == "host" and str(tmp_path) in e.value.message
