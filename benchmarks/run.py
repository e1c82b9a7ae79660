"""Benchmark: run every tutorial script as a user would, with its defaults, on real data.

For each script it records its headline figure (metrics.json's "headline": test accuracy for
most; validation accuracy for the counting script, which has no test set; test macro-F1 for the
multilabel one; validation loss for the two character language models), wall time (in total,
and training time per epoch), the training time it took to reach its floor,
peak memory (RSS of the script's process, and GPU memory on a GPU), device, precision, torch
version, CPU/GPU model and thread count.
It writes benchmarks/results-<device>.json and results-<device>.md (the Markdown table the
README shows), and exits non-zero if any script ends below its floor.

    python benchmarks/run.py --data-dir DIR                      # every script
    python benchmarks/run.py --data-dir DIR --only conv_net_cifar.py    # that row anew
    python benchmarks/run.py --data-dir DIR --device cuda --repeats 3

DIR holds the datasets in their official layouts (MNIST/, FashionMNIST/, cifar-10-batches-py/,
aclImdb/, goemotions/, tinyshakespeare/). Run it on an otherwise idle machine: scripts run one
after another, never together.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# script, floor of its headline figure, the training seconds it should take to reach it on a
# 2-core CPU, and (for the DDP script) how many processes torchrun starts; None: plain `python`.
TARGETS = [
    ("mnist/fc_mnist.py", 0.90, 2, None),
    ("mnist/conv_mnist.py", 0.985, 60, None),
    ("mnist/fashion_mnist_ffnn.py", 0.88, 30, None),
    ("mnist/fashion_mnist_classifier.py", 0.87, 30, None),
    ("mnist/fc_regression.py", None, None, None),  # shows a plateau on purpose: no floor
    ("conv_net_cifar.py", 0.67, 30, None),
    ("resnet_cifar.py", 0.90, 840, None),
    ("feedforward_1_hid_nn.py", 0.48, 20, None),
    ("feedforward_3_hid_nn.py", 0.51, 20, None),
    ("RNN/lstm_net_counting_chars.py", 0.88, 30, None),
    ("RNN/lstm_imdb.py", 0.87, 600, None),
    ("RNN/lstm_imdb_tbptt.py", 0.85, 600, None),
    ("RNN/lstm_multilabel.py", 0.43, 150, None),
    # A loss: its "floor" is a ceiling, reached from above.
    ("RNN/lstm_char_lm.py", 1.55, 240, None),
    ("transformer/transformer_imdb.py", 0.88, 600, None),
    ("transformer/gpt_char_lm.py", 1.60, 600, None),
    # The model fine-tuned on 250 images a class, after the backbone and the table's other cells.
    ("transfer/finetune_images.py", 0.85, 900, None),
    ("distributed/conv_net_cifar_ddp.py", 0.67, 30, 1),
    ("distributed/conv_net_cifar_ddp.py", 0.67, 30, 2),
]
# Scripts that make their own data take no --data-dir.
MAKE_THEIR_DATA = {"RNN/lstm_net_counting_chars.py"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--data-dir", type=Path, required=True, help="folder holding the datasets")
    add(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="passed to every script (default auto)",
    )
    add(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="passed to every script (default auto)",
    )
    add(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=sorted({name for name, *_ in TARGETS}),
        help="run only these scripts (paths as listed in TARGETS); the results file keeps the "
        "other scripts' rows if it was measured on the same machine",
    )
    add("--repeats", type=int, default=1, help="runs per script; times are medians (default 1)")
    add("--keep", type=Path, help="keep every script's output folder and log here (default: none)")
    add(
        "--results-dir",
        type=Path,
        default=REPO / "benchmarks",
        help="where results-<device>.json and .md go (default benchmarks/)",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"argument --repeats: must be at least 1, got {args.repeats}")
    return args


def machine(results):
    """The CPU, and the GPU as the scripts reported it. Never fails: results are always written."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = (
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
            cpu = next(names)
    except (OSError, StopIteration):
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version())
    gpus = sorted({r["gpu"] for r in results if r.get("gpu")})
    if gpus:
        info["gpu"] = ", ".join(gpus)
    return info


def peak_rss_mb(usage):
    """ru_maxrss counts kilobytes on Linux, bytes on macOS."""
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def run_once(script, processes, args, out_dir, log_path):
    """Run one script; return its metrics.json, wall seconds and peak RSS in MB (of its process,
    or under torchrun of the largest of torchrun and its workers)."""
    launcher = [sys.executable]
    if processes:  # torchrun, as `python -m`: the same Python and environment as this one
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
        launcher.append(str(processes))
    data = [] if script in MAKE_THEIR_DATA else ["--data-dir", str(args.data_dir)]
    command = [
        *launcher,
        str(REPO / script),
        *data,
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--out-dir",
        str(out_dir),
    ]
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)  # wait4 also returns the child's resource usage
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        sys.exit(
            f"error: {script} exited with status {os.waitstatus_to_exitcode(status)}; "
            f"the end of its output:\n{tail}"
        )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    # The GPU's name, from the line every script prints first.
    gpu = re.search(r"^device: cuda\S* \((.*?)\);", log_path.read_text(errors="replace"), re.M)
    metrics["gpu"] = gpu and gpu.group(1)
    return metrics, wall, peak_rss_mb(usage)


def headline(metrics):
    """The figure a script reports, named in its metrics.json."""
    return metrics[metrics["headline"]]


def reached(value, floor, name):
    """Whether a figure reached its floor: a loss (lower is better) from above, others from
    below."""
    if value is None:
        return False
    return value <= floor if name.endswith("_loss") else value >= floor


def seconds_to_floor(history, name, floor):
    """Training seconds up to the first epoch whose figure `name` (or, for a test figure that
    is measured at the end only, its validation one) reached the floor (or None)."""
    elapsed = 0.0
    for epoch in history:
        elapsed += epoch["seconds"]
        if reached(epoch.get(name, epoch.get(name.replace("test_", "val_"))), floor, name):
            return elapsed
    return None


def benchmark(script, floor, target, processes, args, work_dir):
    runs = []
    for repeat in range(args.repeats):
        name = f"{Path(script).stem}-{processes or 0}-{repeat}"
        runs.append(run_once(script, processes, args, work_dir / name, work_dir / f"{name}.log"))
    metrics = runs[-1][0]
    name = metrics["headline"]
    to_floor = [seconds_to_floor(m["history"], name, floor) for m, _, _ in runs] if floor else []
    # A headline that only the end of a run measures (resnet_cifar.py's test-time augmentation)
    # reaches its floor after the whole training time, or not at all.
    to_floor = [
        sum(e["seconds"] for e in m["history"])
        if seconds is None and reached(headline(m), floor, name)
        else seconds
        for seconds, (m, _, _) in zip(to_floor, runs)
    ]
    gpu_memory = [m.get("peak_gpu_memory_mb") or 0 for m, _, _ in runs]
    result = dict(
        script=script,
        processes=processes,
        floor=floor,
        target_seconds=target,
        runs=args.repeats,
        metric=name,
        value=statistics.median(headline(m) for m, _, _ in runs),
        epochs=len(metrics["history"]),
        wall_seconds=statistics.median(wall for _, wall, _ in runs),
        train_seconds=statistics.median(
            sum(e["seconds"] for e in m["history"]) for m, _, _ in runs
        ),
        epoch_seconds=statistics.median(e["seconds"] for m, _, _ in runs for e in m["history"]),
        seconds_to_floor=None if None in to_floor or not to_floor else statistics.median(to_floor),
        peak_rss_mb=max(rss for _, _, rss in runs),
        peak_gpu_memory_mb=max(gpu_memory) or None,
        device=metrics["device"],
        gpu=metrics.get("gpu"),
        precision=metrics["precision"],
        torch=metrics["torch"],
        threads=metrics["threads"],
    )
    result["floor_met"] = floor is None or reached(result["value"], floor, name)
    result["time_met"] = target is None or (
        result["seconds_to_floor"] is not None and result["seconds_to_floor"] <= target
    )
    return result


def merged(earlier, results, info):
    """The earlier results file's rows with the scripts just run replaced (in TARGETS' order),
    if it was measured on the same machine; else the new rows alone."""
    if earlier.get("machine") != info:
        print("the earlier results are from another machine: they are replaced")
        return results
    new = {(r["script"], r["processes"]) for r in results}
    rows = [r for r in earlier["results"] if (r["script"], r["processes"]) not in new] + results
    order = [(name, processes) for name, _, _, processes in TARGETS]
    return sorted(rows, key=lambda r: order.index((r["script"], r["processes"])))


def markdown(results, info):
    first = results[0]
    where = info.get("gpu", f"{info['cpu']}, {info['cores']} cores")
    precisions = ", ".join(sorted({r["precision"] for r in results}))
    gpu_column = any(r["peak_gpu_memory_mb"] for r in results)
    # Each command once, with its date (rows re-run with --only keep the others' command).
    commands = dict.fromkeys((r["command"], r["date"]) for r in results)
    lines = [
        f"Measured on {where} (device {first['device']}, precision {precisions}, "
        f"torch {first['torch']}, {first['threads']} threads), "
        + "; then ".join(f"`{command}` on {date}" for command, date in commands)
        + ", "
        + (
            "1 run per script."
            if first["runs"] == 1
            else f"{first['runs']} runs per script (times are medians)."
        ),
        "",
        "| script | figure | floor | training time to floor (target) | s/epoch | epochs "
        "| wall, total | peak RSS |" + (" peak GPU memory |" if gpu_column else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if gpu_column else ""),
    ]
    for r in results:
        figure = f"{r['value']:.4f} ({r['metric'].replace('_', ' ')})"
        floor = (
            "-"
            if r["floor"] is None
            else f"{r['floor']:.3f}" + ("" if r["floor_met"] else " **missed**")
        )
        if r["floor"] is None:
            to_floor = "-"
        elif r["seconds_to_floor"] is None:
            to_floor = "not reached"
        else:
            over = "" if r["time_met"] else " over"
            to_floor = f"{r['seconds_to_floor']:.1f} s ({r['target_seconds']} s){over}"
        name = f"`{r['script']}`"
        if r.get("processes"):
            name += f" (torchrun, {r['processes']} process{'es' if r['processes'] > 1 else ''})"
        row = (
            f"| {name} | {figure} | {floor} | {to_floor} | {r['epoch_seconds']:.1f} "
            f"| {r['epochs']} | {r['wall_seconds']:.0f} s | {r['peak_rss_mb'] / 1024:.2f} GB |"
        )
        if gpu_column:
            row += f" {r['peak_gpu_memory_mb'] or 0:.0f} MB |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    chosen = [t for t in TARGETS if args.only is None or t[0] in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="benchmark-") as work:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep or work
        for script, floor, target, processes in chosen:
            launch = f" under torchrun with {processes} processes" if processes else ""
            print(f"running {script}{launch} ...", flush=True)
            result = benchmark(script, floor, target, processes, args, Path(work))
            results.append(result)
            to_floor = result["seconds_to_floor"]
            print(
                f"  {result['metric'].replace('_', ' ')} {result['value']:.4f} (floor {floor}), "
                f"{result['wall_seconds']:.0f} s wall, {result['train_seconds']:.1f} s training, "
                f"floor reached after {'-' if to_floor is None else f'{to_floor:.1f} s'}, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    device = results[0]["device"].split(":")[0]
    info = machine(results)
    date = datetime.date.today().isoformat()
    command = "python benchmarks/run.py --data-dir DATA"
    command += f" --only {' '.join(args.only)}" if args.only else ""
    command += f" --repeats {args.repeats}" if args.repeats > 1 else ""
    for result in results:
        result.update(date=date, command=command)
    results_json = args.results_dir / f"results-{device}.json"
    if args.only and results_json.is_file():
        results = merged(json.loads(results_json.read_text()), results, info)
    table = markdown(results, info)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(dict(machine=info, results=results), indent=2))
    (args.results_dir / f"results-{device}.md").write_text(table)
    print("\n" + table)
    missed = [r["script"] for r in results if not r["floor_met"]]
    slow = [r["script"] for r in results if r["floor_met"] and not r["time_met"]]
    if slow:
        print(f"over the time target: {', '.join(slow)}")
    if missed:
        sys.exit(f"error: below the floor: {', '.join(missed)}")
    print(f"every floor reached; results in {args.results_dir}/results-{device}.json and .md")


if __name__ == "__main__":
    main()
