"""The built wheel installs one import name, `clipmem`, and carries the files the layers read at run time.

The wheel is built from a copy of the source (setuptools leaves build/ and clipmem.egg-info/ beside the
sources it builds), with the environment's setuptools: no download.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from source_tree import copy_source


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[list[str], list[str]]:
    """The wheel's file names and the import names of its top_level.txt."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_source(tmp / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp / "dist"), str(source)], check=True, timeout=300)
    (built,) = (tmp / "dist").glob("clipmem-*.whl")
    with zipfile.ZipFile(built) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        return names, archive.read(top_level).decode().split()


def test_the_wheel_installs_only_clipmem(wheel):
    names, top_level = wheel
    assert top_level == ["clipmem"]
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"clipmem"}


def test_the_wheel_carries_the_layers_and_their_data(wheel):
    names, _ = wheel
    for required in ("clipmem/cli.py", "clipmem/scoring/score.py", "clipmem/backend/api/app.py",
                     "clipmem/frontend/app.py", "clipmem/scoring/model_configs/clipmem-demo.json",
                     "clipmem/backend/migrations/script.py.mako", "clipmem/frontend/views/explore.py"):
        assert required in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
