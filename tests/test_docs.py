"""The documentation: the site builds offline with --strict, every figure on a results page is a row
of a data file that records how it was made, every `bench` command the pages name exists, the pages
speak of the product only, and `bench report`'s page fits a browser window."""

from __future__ import annotations

import csv
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.helpers import TINY_STUDY, bench_here, clean_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RESULTS = DOCS / "results"
BENCH = Path(sys.executable).with_name("bench")


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()
PAGES = sorted(DOCS.rglob("*.md"))


def test_the_site_builds_offline_with_strict_and_renders_its_tables_from_the_data(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=clean_env() | {"NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lucic = (site / "results" / "lucic" / "index.html").read_text()
    [ns_gan] = [row for row in hooks.read(RESULTS / "lucic.csv") if row["loss"] == "NS GAN"]
    assert re.search(rf"<td>NS GAN</td>.*?<td>{re.escape(ns_gan['fid_inception'])}</td>", lucic, re.S)
    assert ns_gan["commit"] in lucic and "<!-- table:" not in lucic
    scoring = (site / "scoring" / "index.html").read_text()
    from bench.scores import SCORES

    assert all(score.name in scoring for score in SCORES) and "<!-- scores -->" not in scoring
    assert "TrainConfig" in (site / "reference" / "index.html").read_text(), "the API reference is generated"


def test_the_site_configuration_fetches_nothing_at_build_time():
    config = (ROOT / "mkdocs.yml").read_text()
    assert "font: false" in config and "strict: true" in config
    assert not re.search(r"^\s*- (privacy|social|offline|git-\S+)\s*$", config, re.M), "no plugin that fetches"


# Published figures are data.

NUMBER = re.compile(r"(?<![\w.^−-])\d[\d,]*\.\d+(?![\w.])")
"""A figure: a number with a decimal point (counts and years are not figures)."""


def prose(markdown: str) -> str:
    """The text a reader sees as written on the page: code blocks, inline code, image and link
    targets and table markers left out."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    markdown = re.sub(r"^(    .*\n)+", "", markdown, flags=re.M)
    markdown = re.sub(r"`[^`]*`", "", markdown)
    markdown = re.sub(r"\]\([^)]*\)", "]", markdown)
    return re.sub(r"<!--.*?-->", "", markdown)


def figures(text: str) -> set[str]:
    return {number.replace(",", "") for number in NUMBER.findall(text)}


def data_figures(*paths: Path) -> set[str]:
    found = set()
    for path in paths:
        columns, rows = hooks.figures_of(path)
        found |= {number for row in rows for column in columns for number in figures(row[column])}
    return found


def unrecorded_figures(markdown: str, page: Path) -> set[str]:
    """Figures a page quotes that none of the data files it shows hold."""
    files = [page.parent / name for name in hooks.TABLE.findall(markdown)]
    return figures(prose(markdown)) - data_figures(*files)


@pytest.mark.parametrize("page", sorted(RESULTS.glob("*.md")), ids=lambda path: path.name)
def test_every_figure_a_results_page_quotes_is_a_row_of_its_data(page):
    markdown = page.read_text()
    assert "|---" not in prose(markdown), "a results page's tables are generated from its data files"
    assert unrecorded_figures(markdown, page) == set()


def test_changing_a_figure_on_a_results_page_without_its_data_fails():
    page = RESULTS / "lucic.md"
    markdown = page.read_text()
    rendered = hooks.expand(markdown, page)
    assert "| NS GAN | gan | 26.5 ± 1.6 | 23.5 |" in rendered
    assert unrecorded_figures(markdown, page) == set()
    typed = rendered.replace("| NS GAN | gan | 26.5 ± 1.6 | 23.5 |", "| NS GAN | gan | 26.5 ± 1.6 | 22.5 |")
    assert "|---" in prose(typed), "a table typed by hand is refused by the check above"
    assert "22.5" in unrecorded_figures(typed, page)
    assert unrecorded_figures(markdown.replace("(0.010 on the final 10k", "(0.020 on the final 10k"), page) == {"0.020"}


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.csv")), ids=lambda path: path.name)
def test_every_data_row_records_how_it_was_made(path):
    rows = hooks.read(path)  # refuses a file without the provenance columns or a row without them
    for row in rows:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["date"]), row
        assert row["cores"].isdigit() and row["device"] in ("cpu", "cuda"), row
        assert row["precision"] in ("float32", "bfloat16", "float32 and bfloat16"), row
        assert subprocess.run(["git", "cat-file", "-e", f"{row['commit']}^{{commit}}"], cwd=ROOT).returncode == 0, row
    assert any(re.search(rf"^<!-- table: (results/)?{path.name} -->$", page.read_text(), re.M) for page in PAGES), \
        f"{path.name} is shown by no page"


def test_the_readme_headline_figures_are_rows_of_the_data():
    text = README.read_text()
    headline = text[text.index("## Headline results"):text.index("## Where to go next")]
    assert "|---" in headline
    assert figures(prose(headline)) - data_figures(*RESULTS.glob("*.csv")) == set()


# Every command the pages name exists.

def command_lines(text: str) -> list[str]:
    """`bench ...` as the pages show it: in code blocks (fenced or indented) and inline code."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    blocks += re.findall(r"^(?:    .*\n)+", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), flags=re.M)
    lines = []
    for block in blocks:
        block = re.sub(r"\\\n\s*", " ", block)
        lines += block.splitlines()
    lines += re.findall(r"`([^`\n]+)`", text)
    found = []
    for line in lines:
        line = re.sub(r"^\s*\$\s*", "", line.strip())
        if re.match(r"(\S+=\S+\s+)*bench\s", line):
            found.append(re.sub(r"^(\S+=\S+\s+)*", "", line))
    return found


def unknown_in(line: str, root: click.Group) -> list[str]:
    """The parts of a `bench ...` line that name no command or option."""
    try:
        words = shlex.split(line, comments=True)[1:]
    except ValueError:
        words = line.split()[1:]
    command, unknown = root, []
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        if name in ("...",):
            return []
        if name not in command.commands:
            return [f"command {name!r}"]
        command = command.commands[name]
    if isinstance(command, click.Group):
        return []
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in words:
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            option = word.split("=")[0]
            if option not in known:
                unknown.append(f"option {option!r} of `bench {command.name}`")
    return unknown


def test_the_checker_finds_a_command_or_option_that_does_not_exist():
    from bench.cli import main

    assert unknown_in("bench run --study quick --variant dcgan", main) == []
    assert unknown_in("bench run --study quick --no-such-option", main) == ["option '--no-such-option' of `bench run`"]
    assert unknown_in("bench frobnicate --study quick", main) == ["command 'frobnicate'"]
    [line] = command_lines("    bench run --study a \\\n        --workers 2   # two\n")
    assert line.split() == ["bench", "run", "--study", "a", "--workers", "2", "#", "two"]


def test_every_bench_command_the_pages_and_data_name_exists():
    from bench.cli import main

    texts = {path.relative_to(ROOT): path.read_text() for path in [README, *PAGES]}
    for path in RESULTS.glob("*.csv"):
        with path.open(newline="") as file:
            texts[path.relative_to(ROOT)] = "\n".join(f"`{command.strip()}`" for row in csv.DictReader(file)
                                                      for command in row["command"].split(";"))
    problems = {str(path): bad for path, text in texts.items()
                if (bad := [(line, unknown) for line in command_lines(text) if (unknown := unknown_in(line, main))])}
    assert problems == {}
    assert sum(len(command_lines(text)) for text in texts.values()) > 50, "the walk finds the commands"


def test_the_amp_help_agrees_with_what_was_measured():
    from click.testing import CliRunner

    from bench.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    ratios = [float(row["bfloat16 G steps/s ÷ float32"]) for row in hooks.read(RESULTS / "amp.csv")]
    assert "no faster" not in text and f"{min(ratios):g}-{max(ratios):g}x sooner" in text


# The pages speak of the product.

ALLOWED: set[str] = set()
"""Uses of the words that are about the product (none now)."""


def test_no_page_or_module_tells_how_the_project_was_developed():
    found = []
    for path in [README, *PAGES, *sorted((ROOT / "bench").rglob("*.py"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(sessions?|lent|previous session|the last landing)\b", line, re.I) \
                    and not any(allowed in line for allowed in ALLOWED):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


# bench report's page in a browser.

PAGE_WIDTH = """<script>document.body.insertAdjacentHTML('beforeend', '<pre id="measured">'
+ document.documentElement.scrollWidth + ' ' + window.innerWidth + '</pre>')</script>"""


@pytest.fixture(scope="module")
def reported_study(project_folder) -> Path:
    """A folder in which `bench run` trained a two-variant study 'wide' (2 trials each, 20 steps)."""
    cwd = project_folder("report-width")
    study = TINY_STUDY.format(steps=20, eval_every=20).replace("trials = 3", "trials = 2")
    (cwd / "wide.toml").write_text('variant = "dcgan,gan"\n' + study)
    result = subprocess.run([BENCH, "run", "--study", "wide.toml"], cwd=cwd, capture_output=True, text=True, timeout=600,
                            env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.mark.browser
@pytest.mark.e2e
def test_the_report_is_no_wider_than_a_1400_px_window(reported_study, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (`make test` installs it)"
    cwd = reported_study
    result = bench_here("report", "--study", "wide", "-o", "results/report.html", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (cwd / "results" / "report.html").read_text()
    assert "class='wide'" in page and page.count("<table") == page.count("<div class='wide'><table")
    measured = tmp_path / "measured.html"
    measured.write_text(page.replace("</body>", PAGE_WIDTH + "</body>"))
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--window-size=1400,2400"]
    dom = subprocess.run([*flags, "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", (cwd / "results" / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000, "a rendered page"
    page_width, window = map(int, re.search(r'<pre id="measured">(\d+) (\d+)</pre>', dom).groups())
    assert window == 1400 and page_width <= window, f"the page is {page_width} px wide in a {window} px window"


@pytest.mark.e2e
def test_every_plot_title_of_the_report_fits_its_figure(reported_study, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from bench.compare import compare_study, figures
    from bench.tracking import TrackingStore

    monkeypatch.chdir(reported_study)
    store = TrackingStore.open(f"sqlite:///{reported_study / 'results' / 'mlflow.db'}")
    cut = []
    for name, figure in figures(compare_study("wide", store), store).items():
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        for axis in figure.axes:
            box = axis.title.get_window_extent(renderer)
            if axis.title.get_text() and (box.x0 < 0 or box.x1 > figure.bbox.width):
                cut.append(f"{name}: {axis.title.get_text()!r}")
    assert cut == []
