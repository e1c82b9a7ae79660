"""Pipfile.lock installs on macOS too, requirements.txt says what the lock says, and the README
says the oldest torch the scripts run on."""

import json
import re

from conftest import REPO, all_scripts

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


# The first torch release with each torch.accelerator call the scripts make, as PyTorch's docs of
# each release list them (current_accelerator's check_available came in 2.7, the memory calls in
# 2.9); a call missing here fails the test below until its release is added.
ACCELERATOR_CALLS = {
    "current_accelerator": (2, 7),
    "device_count": (2, 6),
    "set_device_index": (2, 6),
    "max_memory_allocated": (2, 9),
}


def test_the_readme_says_the_oldest_torch_the_scripts_run_on():
    """Colab and other ready-made installs bring their own torch: the README's oldest is the
    newest first release of the torch.accelerator calls the scripts make, and not above the pin
    (nor is its oldest for an Apple GPU)."""
    readme = " ".join((REPO / "README.md").read_text().split())
    found = re.search(
        r"any torch from (\d+)\.(\d+) on runs (?:them|the scripts).*?from (\d+)\.(\d+) on an Apple",
        readme,
    )
    assert found, "README.md says no oldest torch"
    oldest, apple = (int(found[1]), int(found[2])), (int(found[3]), int(found[4]))
    sources = "\n".join(path.read_text() for path in all_scripts())
    calls = set(re.findall(r"torch\.accelerator\.(\w+)\(", sources))
    assert calls <= set(ACCELERATOR_CALLS), calls - set(ACCELERATOR_CALLS)
    assert oldest == max(ACCELERATOR_CALLS[call] for call in calls)
    pinned = tuple(int(n) for n in LOCK["default"]["torch"]["version"].lstrip("=").split(".")[:2])
    assert oldest <= apple <= pinned
