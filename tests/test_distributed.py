"""distributed/: DDP under torchrun on the CPU (Gloo) and fixture data.

Every run here is a real launch: plain python, or torchrun with 2 processes. The reference runs
are shared between tests (module-scoped), which keeps the file under a minute.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

SCRIPT = str(REPO / "distributed" / "conv_net_cifar_ddp.py")
# 100 fixture images in batches of 16: 7 steps an epoch, the last one (4 images) uneven
TRAINING = ["--epochs", "3", "--batch-size", "16", "--precision", "fp32"]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find workers")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out_dir, data_dir, processes=None, extra=()):
    """Plain python (processes=None) or torchrun with that many processes."""
    launch = [sys.executable, SCRIPT]
    if processes:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += ["--nproc-per-node", str(processes), *extra, SCRIPT]
    return launch + [*TRAINING, "--data-dir", str(data_dir), "--out-dir", str(out_dir)]


def run(args, env, timeout=60):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def weights(out_dir):
    return torch.load(Path(out_dir) / "snapshot.pt", weights_only=True)["model"]


def metrics(out_dir):
    return json.loads((Path(out_dir) / "metrics.json").read_text())


def assert_same_weights(a, b, exact):
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir, script_env):
    out_dir = tmp_path_factory.mktemp("one")
    run(command(out_dir, data_dir), script_env)
    return out_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data_dir, script_env):
    out_dir = tmp_path_factory.mktemp("two")
    run(command(out_dir, data_dir, processes=2), script_env)
    return out_dir


def test_one_and_two_processes_end_with_the_same_weights(one_process, two_processes):
    assert_same_weights(weights(one_process), weights(two_processes), exact=False)
    one, two = metrics(one_process), metrics(two_processes)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["backend"] == two["backend"] == "gloo"
    assert one["resumed_from_epoch"] == two["resumed_from_epoch"] == 0
    assert len(two["history"]) == 3 and all(h["seconds"] > 0 for h in two["history"])
    # evaluation over both ranks' halves of the test set scores the same as one process
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"])
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)


def children(pid):
    """Process ids of the direct children of `pid`, with their environments."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == pid:
                    environ = (entry / "environ").read_bytes().split(b"\0")
                    found[int(entry.name)] = dict(
                        e.decode().split("=", 1) for e in environ if b"=" in e
                    )
            except (OSError, IndexError, ValueError):
                pass  # the process ended while being read
    return found


def freeze_after_first_snapshot(process, out_dir):
    """Wait for snapshot.pt, then stop (SIGSTOP) the launched process and its workers at once,
    so a test can strike mid-run however fast the epochs are."""
    deadline = time.monotonic() + 45
    while not (out_dir / "snapshot.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no snapshot written"
        time.sleep(0.002)
    workers = children(process.pid)
    for pid in [process.pid, *workers]:
        os.kill(pid, signal.SIGSTOP)
    return workers


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, data_dir, script_env, one_process):
    first = subprocess.Popen(
        command(tmp_path, data_dir), env=script_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    freeze_after_first_snapshot(first, tmp_path)
    os.kill(first.pid, signal.SIGTERM)  # as a job scheduler stops a job
    os.kill(first.pid, signal.SIGCONT)
    out, err = (text.decode() for text in first.communicate(timeout=30))
    if first.returncode != 0:  # stopped before the end (it may also have finished meanwhile)
        assert first.returncode == 130 and "interrupted" in out, out + err
        assert "Traceback" not in err, err
    resumed = run(command(tmp_path, data_dir), script_env)
    assert "resuming from" in resumed.stdout
    assert metrics(tmp_path)["resumed_from_epoch"] >= 1
    assert_same_weights(weights(tmp_path), weights(one_process), exact=True)


def test_killed_worker_is_restarted_and_resumes(tmp_path, data_dir, script_env, two_processes):
    launch = command(tmp_path, data_dir, processes=2, extra=["--max-restarts", "1"])
    agent = subprocess.Popen(launch, env=script_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = freeze_after_first_snapshot(agent, tmp_path)
    second = next(pid for pid, env in workers.items() if env.get("LOCAL_RANK") == "1")
    os.kill(second, signal.SIGKILL)
    for pid in [agent.pid, *workers]:
        if pid != second:
            os.kill(pid, signal.SIGCONT)
    out, err = (text.decode() for text in agent.communicate(timeout=60))
    assert agent.returncode == 0, out + err
    assert metrics(tmp_path)["resumed_from_epoch"] >= 1
    assert_same_weights(weights(tmp_path), weights(two_processes), exact=True)


def test_two_nodes_meet_over_localhost_for_a_dry_run(tmp_path, data_dir, script_env):
    endpoint = f"127.0.0.1:{free_port()}"
    launches = []
    for node_rank in (0, 1):
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        launch += ["--node-rank", str(node_rank), "--nproc-per-node", "1"]
        launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test"]
        launch += [SCRIPT, "--dry-run", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)]
        launches.append((launch, script_env))
    outputs = run_together(launches)
    assert metrics(tmp_path / "dry-run")["world_size"] == 2
    assert "processes: 2 (gloo)" in "".join(outputs)


def test_two_processes_started_by_hand_meet_as_on_windows(tmp_path, data_dir, script_env):
    """torchrun stops on Windows (its store needs libuv): the variables it would set, given by
    hand to each process, as distributed/README.md shows; rank 0 then runs the store."""
    env = dict(script_env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    launch = [sys.executable, SCRIPT, "--dry-run", "--data-dir", str(data_dir)]
    launch += ["--out-dir", str(tmp_path)]
    outputs = run_together([(launch, dict(env, RANK=r, LOCAL_RANK=r)) for r in ("0", "1")])
    assert metrics(tmp_path / "dry-run")["world_size"] == 2
    assert "processes: 2 (gloo)" in "".join(outputs)


def run_together(launches):
    """Start every (command, environment) at once; their outputs, once all have ended well."""
    processes = [
        subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for launch, env in launches
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, out + err
    return [out for out, _ in outputs]
