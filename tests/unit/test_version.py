"""The release version has one home (pyproject.toml); every copy agrees with it, and the setter moves them all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import set_version
from modeldeploy_operator import config
from modeldeploy_server import __version__

REPO = Path(__file__).resolve().parents[2]


def test_every_copy_of_the_version_is_pyprojects() -> None:
    home = set_version.home_version()
    assert set_version.check() == [], f"run `make version VERSION={home}` so every copy says {home}"
    assert __version__ == home
    images = (config.DEFAULT_SERVER_IMAGE, config.DEFAULT_GPU_SERVER_IMAGE)
    server = "ghcr.io/modeldeploy/modeldeploy-server"
    assert images == (f"{server}:{home}-cpu", f"{server}:{home}")


def test_the_setter_moves_every_copy_and_refuses_what_helm_would(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On a copy of the files: after set_version("9.8.7") every copy reads 9.8.7, the README's table too."""
    for relative in ["pyproject.toml", "README.md", *{key.split("#")[0] for key in set_version.COPIES}]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    shutil.copytree(REPO / "operator", tmp_path / "operator", dirs_exist_ok=True)
    monkeypatch.setattr(set_version, "REPO", tmp_path)
    set_version.set_version("9.8.7")
    assert set(set_version.copies().values()) == {"9.8.7"}
    assert set_version.check() == []
    (tmp_path / "serving-image/modeldeploy_server/__init__.py").write_text('__version__ = "9.8.6"\n')
    assert set_version.check() == ["the server's __version__ is 9.8.6, pyproject.toml's version is 9.8.7"]
    assert set_version.home_version() == "9.8.7"
    readme = (tmp_path / "README.md").read_text()
    assert "`ghcr.io/modeldeploy/modeldeploy-server:9.8.7-cpu`" in readme
    assert "modeldeploy-server:0.1.0" not in readme.split("<!-- operator-settings:end -->")[0].split(
        "<!-- operator-settings:start -->")[1]
    with pytest.raises(SystemExit, match=r"expected MAJOR\.MINOR\.PATCH"):
        set_version.set_version("v1.0")
