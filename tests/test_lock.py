"""Pipfile.lock installs on macOS too, and requirements.txt says what the lock says."""

import json
import re

from conftest import REPO

LOCK = json.loads((REPO / "Pipfile.lock").read_text())
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def test_every_cuda_only_package_keeps_its_linux_marker():
    """Without the marker `pipenv sync` on a Mac tries to fetch Linux-only wheels and stops."""
    cuda_only = {name: entry for name, entry in LOCK["default"].items() if CUDA_ONLY.match(name)}
    assert len(cuda_only) > 10  # the CUDA build's runtime libraries, triton, cuda-bindings...
    for name, entry in cuda_only.items():
        assert "platform_system == 'Linux'" in entry.get("markers", ""), name


def pins(requirements_file):
    """{name: (version, markers)} of a requirements file written by `pipenv requirements`."""
    found = {}
    for line in (REPO / requirements_file).read_text().splitlines():
        if line and not line.startswith(("#", "-")):
            requirement, _, markers = line.partition(";")
            name, version = requirement.strip().split("==")
            found[name.split("[")[0]] = (version, markers.strip())  # cuda-toolkit[cublas,...]
    return found


def lock_pins(section):
    return {
        name: (e["version"].lstrip("="), e.get("markers", "")) for name, e in LOCK[section].items()
    }


def test_requirements_files_match_the_lock():
    assert pins("requirements.txt") == lock_pins("default")
    assert pins("requirements-dev.txt") == lock_pins("develop")


def test_nothing_in_the_lock_needs_more_than_python_3_10():
    """The README promises Python 3.10 or newer; a marker like python_version >= '3.11' would
    silently leave a package out there."""
    for section in ("default", "develop"):
        for name, entry in LOCK[section].items():
            assert not re.search(r"python_version >= '3\.1[1-9]'", entry.get("markers", "")), name
