"""The Markdown files tell the truth about the code: the names, flags and output files they show
for a script exist in it, every script is documented, and every relative link resolves. The figures
they quote come from the benchmark, which alone says on what machine and when they were measured."""

import json
import re
import subprocess
import sys
from functools import cache

import pytest

from conftest import REPO, all_scripts

MARKDOWN = sorted(
    p
    for p in REPO.rglob("*.md")
    if not {".venv", ".git", "runs", ".pytest_cache"} & set(p.relative_to(REPO).parts)
    and not (p.parent.name == "data" and p.name != "README.md")
)
SCRIPTS = {p.name: p for p in all_scripts()}
BENCHMARK = REPO / "benchmarks" / "run.py"
# The benchmark's own pages: the one place that names machines and dates and says how figures were
# measured (results-*.md are run.py's tables, held again in benchmarks/README.md).
MEASUREMENTS = [REPO / "benchmarks" / "README.md", *sorted(REPO.glob("benchmarks/results-*.md"))]
LESSONS = [p for p in MARKDOWN if p not in MEASUREMENTS]
FRONT_PAGE_LINES = 150
# Flags of the commands around the scripts: torchrun, pip and pipenv.
LAUNCHER_FLAGS = {"--standalone", "--nproc-per-node", "--max-restarts", "--nnodes", "--node-rank"}
LAUNCHER_FLAGS |= {"--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--user", "--dev", "--help"}
# Names a README quotes from other libraries, for comparison (torchtext's, retired).
OTHER_LIBRARIES = {"basic_english"}
# Files a script writes in another mode than --dry-run, and which script.
OTHER_MODES = {
    "evaluation.json": "fashion_mnist_classifier.py",
    "snapshot.pt": "conv_net_cifar_ddp.py",
}


def sections(markdown):
    """(heading, text) of every section of a Markdown text, code blocks included (a `#` comment
    in a code block is not a heading)."""
    found, in_code = [["", []]], False
    for line in markdown.splitlines():
        in_code ^= line.startswith("```")
        if not in_code and re.match(r"#{1,6} ", line):
            found.append([line, []])
        else:
            found[-1][1].append(line)
    return [(heading, "\n".join(lines)) for heading, lines in found]


def scripts_named(text):
    return {SCRIPTS[name] for name in re.findall(r"([\w]+\.py)\b", text) if name in SCRIPTS}


@cache
def help_text(script):
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    return result.stdout


def flags_of(script):
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text(script)))


def spans(text):
    """Inline code spans, outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def problems_in(markdown, metrics_keys=frozenset(), written=None):
    """Every claim of a Markdown text that the code does not bear out, as a list of lines."""
    problems = []
    all_source = "\n".join(p.read_text() for p in SCRIPTS.values())
    for heading, text in sections(markdown):
        named = scripts_named(heading + text)
        source = "\n".join(p.read_text() for p in named) if named else all_source
        for span in spans(text):
            function = re.fullmatch(r"([A-Za-z_]\w*)\(\)", span)
            # A function or method the script defines or calls.
            name = function and function[1]
            if function and not re.search(rf"\b(def|class) {name}\b|\b{name}\(", source):
                problems.append(f"{heading}: `{span}` is defined in none of {sorted(named)}")
            bare = re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", span)
            if (
                bare
                and span not in metrics_keys | OTHER_LIBRARIES
                and not re.search(rf"\b{span}\b", source)
            ):
                problems.append(f"{heading}: `{span}` appears in none of {sorted(named)}")
            flag = re.match(r"(--[a-z][a-z0-9-]*)", span)
            if flag:
                known = set().union(*(flags_of(s) for s in named or SCRIPTS.values()))
                if flag[1] not in known | flags_of(BENCHMARK) | LAUNCHER_FLAGS:
                    problems.append(f"{heading}: `{flag[1]}` is not a flag of {sorted(named)}")
            output = re.fullmatch(r"[\w-]+\.(png|json|pt)", span)
            if output and named and written is not None:
                by = {s for s in named if span in written[s]}
                if not by and OTHER_MODES.get(span) not in {s.name for s in named}:
                    problems.append(f"{heading}: no --dry-run of {sorted(named)} writes `{span}`")
        # Commands in code blocks: the flags after a script's path are that script's.
        for block in re.findall(r"```.*?```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for path, rest in re.findall(r"([\w/.]+\.py)((?: [^|#]*)?)", line):
                    script = SCRIPTS.get(path.split("/")[-1])
                    if script is None:
                        continue
                    unknown = set(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest)) - flags_of(
                        script
                    )
                    if unknown and script.name != "run.py":
                        problems.append(f"`{line.strip()}`: {sorted(unknown)} not in --help")
    return problems


@pytest.fixture(scope="module")
def dry_run_outputs(dry_runs):
    """{script: names of the files its --dry-run wrote}, and every key of their metrics.json."""
    written, keys = {}, set()
    for script, (result, out_dir) in dry_runs.items():
        assert result.returncode == 0, result.stderr[-2000:]
        written[script] = {p.name for p in out_dir.iterdir()}
        metrics = json.loads((out_dir / "metrics.json").read_text())
        keys |= set(metrics) | {k for epoch in metrics["history"] for k in epoch}
    return written, frozenset(keys)


@pytest.mark.parametrize("markdown", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_what_the_docs_say_of_a_script_is_true(markdown, dry_run_outputs):
    written, keys = dry_run_outputs
    assert problems_in(markdown.read_text(), keys, written) == []


def test_the_check_catches_what_does_not_exist():
    """A made-up function, name, flag or file is reported: the check above can fail."""
    made_up = (
        "## `fc_mnist.py`\n\n`check_accuracy()` and `check_accuracy` report accuracy; "
        "`--no-such-flag` exists; it writes `predictions.png`.\n\n"
        "```bash\npython mnist/fc_mnist.py --frobnicate\n```\n"
    )
    fc_mnist = SCRIPTS["fc_mnist.py"]
    problems = problems_in(made_up, frozenset(), {fc_mnist: {"metrics.json", "curves.png"}})
    assert len(problems) == 5, problems


def test_every_script_has_a_row_in_the_top_table_and_a_section():
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| [`")]
    headings = "\n".join(
        heading for md in MARKDOWN for heading, _ in sections(md.read_text()) if heading
    )
    for script in all_scripts():
        path = str(script.relative_to(REPO))
        assert any(f"[`{path}`]" in row for row in rows), f"{path} has no row in README.md"
        assert f"`{script.name}`" in headings, f"{path} has no section in a README"


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("markdown", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(markdown):
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        assert file.exists(), f"{markdown.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            anchors = {slug(h) for h, _ in sections(file.read_text()) if h}
            assert anchor in anchors, f"{markdown.name}: no heading #{anchor} in {file.name}"


def lines_matching(pattern, text):
    """'number: line' of each line of a text in which the pattern occurs."""
    lines = enumerate(text.splitlines(), 1)
    return [f"{number}: {line.strip()}" for number, line in lines if pattern.search(line)]


def test_no_doc_speaks_of_how_the_project_is_made():
    # Each word is spelled with a [x] class so that a grep for these words finds the docs, not this.
    # ("A probe" of a machine is a lab note; a linear probe, transfer/'s --mode probe, is not.)
    words = "th[e] issue|quick pro[b]e|a pro[b]e run|thro[w]away|len[t] to|thi[s] vm\\b"
    words += "|developmen[t] machine"
    pattern = re.compile(words + "|thi[s] machine|thi[s] sessio[n]", re.I)
    for path in MARKDOWN + all_scripts():
        assert lines_matching(pattern, path.read_text()) == [], path.relative_to(REPO)


# CPU models and dates say how and when a figure was measured: benchmarks/README.md's business.
MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
LAB_NOTES = re.compile(
    r"\b(EP[Y]C|Xe[o]n|Ry[z]en|Threadr[i]pper|Opt[e]ron|Z[e]n( ?\d)?)\b"
    rf"|\b\d{{4}}-\d\d-\d\d\b|\b({MONTHS})[a-z]*\.? \d{{4}}\b"
)


@pytest.mark.parametrize("path", LESSONS + all_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_cpu_model_or_date_outside_the_benchmark(path):
    assert lines_matching(LAB_NOTES, path.read_text()) == []


# A quoted result: a decimal with 3 or more digits after the point (0.9045, 1.486, 0.903), or a
# number of seconds ("827 s", "67 s/epoch", "1.8 s"). Settings are left alone: flag values and
# formulas are code (`--lr 3e-3`, `--ema 0.998`), skipped with the code and the link targets, and a
# decimal of one or two digits is a setting or a rounded expectation (std 0.02, dropout 0.2,
# "about 0.95"), not a measured figure.
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d{3,}|\d+(?:\.\d+)?(?= ?s\b))(?!\.?\d)")


def figures_quoted(markdown):
    prose = re.sub(r"```.*?```|`[^`\n]+`|\]\([^)]*\)|https?://\S+", " ", markdown, flags=re.S)
    return FIGURE.findall(prose)


def json_numbers(value):
    if isinstance(value, dict):
        return [n for v in value.values() for n in json_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in json_numbers(v)]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return [float(value)] if is_number else []


@cache
def measured():
    """Every number of benchmarks/README.md and of the benchmark's results-*.json."""
    text = (REPO / "benchmarks" / "README.md").read_text().replace(",", "")
    numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]
    for path in REPO.glob("benchmarks/results-*.json"):
        numbers += json_numbers(json.loads(path.read_text()))
    return numbers


def unmeasured(markdown, numbers):
    """The figures a text quotes that no measured number gives, as written (0.904 is 0.9045 or
    0.90412 rounded, 827 s is 826.9)."""
    unknown = []
    for figure in figures_quoted(markdown):
        half_unit = 0.5 * 10 ** -len(figure.partition(".")[2]) + 1e-9
        if not any(abs(n - float(figure)) <= half_unit for n in numbers):
            unknown.append(figure)
    return unknown


@pytest.mark.parametrize("markdown", LESSONS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_figure_quoted_is_measured_in_the_benchmark(markdown):
    assert unmeasured(markdown.read_text(), measured()) == []


def lines_over(text, most):
    return max(0, len(text.splitlines()) - most)


def test_the_front_page_is_short():
    assert lines_over((REPO / "README.md").read_text(), FRONT_PAGE_LINES) == 0


def test_the_checks_catch_lab_notes_unmeasured_figures_and_a_long_page():
    """Made-up text that each check above must reject, and settings it must let pass."""
    notes = "On the 2-core AMD EPYC 7002 (Zen 2), 2026-12-05.\nIntel Xeon, December 2026.\nZen\n"
    assert len(lines_matching(LAB_NOTES, notes)) == 3
    assert lines_matching(LAB_NOTES, "NVIDIA GPUs from Ampere on; Credits (2015).") == []
    made_up = (
        "Test accuracy 0.9123 in 4242 s (67.7 s/epoch); `--lr 3e-3`, `--ema 0.998`, dropout 0.2, "
        "[the paper](https://arxiv.org/abs/1708.07120), torch 2.14.1.\n"
        "```\npython x.py --ema 0.999\n```\n"
    )
    assert unmeasured(made_up, [0.9045, 827.0]) == ["0.9123", "4242", "67.7"]
    assert unmeasured("0.904 and 0.9045 in 827 s.", [0.9045, 826.9]) == []
    assert lines_over("line\n" * (FRONT_PAGE_LINES + 1), FRONT_PAGE_LINES) == 1


def seconds(value):
    """How the top table writes a time: one decimal under 10 s, whole seconds above."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def test_the_top_table_quotes_the_benchmark():
    """Each script's row in README.md gives the figure, the seconds per epoch and the total
    seconds of its row in benchmarks/results-cpu.json (for the DDP script, 1 process)."""
    results = json.loads((REPO / "benchmarks" / "results-cpu.json").read_text())["results"]
    measured = {}
    for result in results:
        measured.setdefault(result["script"], result)
    readme = (REPO / "README.md").read_text()
    for script in all_scripts():
        path = str(script.relative_to(REPO))
        row = next(line for line in readme.splitlines() if line.startswith(f"| [`{path}`]"))
        figure_cell, time_cell = row.strip("| ").split(" | ")[-2:]
        result = measured[path]
        assert figure_cell.startswith(f"{result['value']:.3f} "), (path, figure_cell)
        expected = (
            f"{seconds(result['epoch_seconds'])} s/epoch, {result['wall_seconds']:.0f} s in all"
        )
        assert time_cell == expected, (path, time_cell, expected)


def test_the_benchmark_readme_holds_the_measured_table():
    table = (REPO / "benchmarks" / "results-cpu.md").read_text().strip()
    assert table in (REPO / "benchmarks" / "README.md").read_text()
