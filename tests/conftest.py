import gc
import importlib.util
import io
import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(TESTS / "fixture_site")]

import fixtures  # noqa: E402
from fixture_md5s import swap_md5s  # noqa: E402  (tests/fixture_site)

# A proxy on a closed local port: any download fails at once, as on a machine with no network.
NO_NETWORK = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "",
}


def all_scripts():
    """Every tutorial script in the repository: a new one is tested without editing the tests."""
    candidates = sorted(REPO.glob("*.py")) + sorted(REPO.glob("*/*.py"))
    return [
        p
        for p in candidates
        if p.parent.name not in ("tests", "benchmarks") and not p.name.startswith(".")
    ]


def takes_data_dir(script):
    """Whether a script reads a dataset (--data-dir): a script that makes its data has none."""
    return "data=None" not in Path(script).read_text()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A folder holding every tiny fixture dataset, with torchvision told their MD5s."""
    root = tmp_path_factory.mktemp("data")
    md5_file = fixtures.write_all(root)
    swap_md5s(json.loads(md5_file.read_text()))  # for the scripts imported into this process
    return root


@pytest.fixture(scope="session")
def script_env(data_dir):
    """Environment for running a script as a subprocess on the fixture data, offline."""
    env = dict(
        os.environ, **NO_NETWORK, FIXTURE_MD5S=str(data_dir / "fixture-md5s.json"), MPLBACKEND="Agg"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "fixture_site"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)


def load_script(relative_path):
    """Import a script as a module (its main() does not run), to test its pieces. Registered under
    its name, with its folder on sys.path, as an imported module is: a DataLoader worker started
    by "spawn" (macOS, Windows) or "forkserver" (Linux from Python 3.14) unpickles the script's
    functions by importing it by that name, and refuses a function that is not sys.modules'."""
    path = REPO / relative_path
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


# How DataLoader worker processes start: the platform's default ("fork" on Linux up to Python
# 3.13), and "spawn", the default on macOS and Windows, which imports the script afresh in each.
START_METHODS = sorted({multiprocessing.get_start_method(), "spawn"})


@pytest.fixture(params=START_METHODS)
def start_method(request):
    """Run the test with worker processes started by each method of START_METHODS."""
    default = multiprocessing.get_start_method()
    multiprocessing.set_start_method(request.param, force=True)
    yield request.param
    # The test's DataLoader workers (kept alive between epochs, and by a SystemExit's traceback)
    # are shut down here, while its patches still hold, not by a garbage collection that a later
    # test happens to start: one such late shutdown waited forever on a worker.
    gc.collect()
    multiprocessing.set_start_method(default, force=True)


def stdin_bytes(monkeypatch, data):
    """Standard input holding these bytes (or this text as UTF-8), as a pipe would give them."""
    data = data.encode() if isinstance(data, str) else data
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


# Files of a real run placed in each dry run's --out-dir beforehand, and their bytes.
REAL_RUN = ("model.pt", "metrics.json", "curves.png")
REAL_RUN_BYTES = b"the results of a real run"


@pytest.fixture(scope="session")
def dry_runs(data_dir, script_env, tmp_path_factory):
    """Every script's dry run as a user would start it (a subprocess, offline, on the fixtures),
    with a real run's results in its --out-dir: {script: (CompletedProcess, the folder the dry
    run writes into)}, as many at once as there are cores."""

    def run(script):
        work_dir = tmp_path_factory.mktemp(script.stem)
        data = ["--data-dir", str(data_dir)] if takes_data_dir(script) else []
        out = ["--out-dir", str(work_dir / "out")]
        # A real run's results, which the dry run must leave alone.
        (work_dir / "out").mkdir()
        for name in REAL_RUN:
            (work_dir / "out" / name).write_bytes(REAL_RUN_BYTES)
        result = subprocess.run(
            [sys.executable, str(script), "--dry-run", *data, *out],
            cwd=work_dir,
            env=script_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return result, work_dir / "out" / "dry-run"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(all_scripts(), pool.map(run, all_scripts())))
