"""The docs site: tutorials run as shown, pages show all of their code, the site builds in strict
mode and every page loads in a browser without a 404 or a console error.

The build and browser checks skip, saying why, without the ``docs`` extra (``pip install -e
".[docs]"``) or without Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
SCRIPTS = sorted([*TUTORIALS.glob("*.py"), *TUTORIALS.glob("*.sh")])
ENTRY_SCRIPTS = sorted(p for p in SCRIPTS if p.with_suffix(".md").is_file())  # one per page
TUTORIAL_TIMEOUT_S = 240  # each is written to take under a minute on one core
START = re.compile(r"--8<-- \[start:([\w-]+)\]")
END = re.compile(r"--8<-- \[end:([\w-]+)\]")
INCLUDE = re.compile(r'--8<-- "tutorials/([\w.]+):([\w-]+)"')


def _sections(script: Path) -> tuple[set[str], list[str]]:
    """The script's section names, and its code lines outside every section (after the first)."""
    names, outside, inside, seen_first = set(), [], None, False
    for line in script.read_text().splitlines():
        if m := START.search(line):
            names.add(m.group(1))
            inside, seen_first = m.group(1), True
        elif END.search(line):
            inside = None
        elif seen_first and inside is None and line.strip():
            outside.append(line)
    return names, outside


def _included() -> set[tuple[str, str]]:
    """(script name, section) pairs included by any page."""
    return {m.groups() for page in DOCS.rglob("*.md") for m in INCLUDE.finditer(page.read_text())}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_line_of_a_tutorial_script_is_on_its_page(script):
    names, outside = _sections(script)
    assert names, f"{script.name} has no `--8<-- [start:NAME]` section, so no page shows it"
    assert not outside, f"{script.name}: lines after the first section but outside every section " \
        f"run without being shown: {outside}"
    missing = {n for n in names if (script.name, n) not in _included()}
    assert not missing, f"{script.name}: sections {sorted(missing)} are on no page"


def test_every_tutorial_page_has_its_script():
    pages = {p.stem for p in TUTORIALS.glob("*.md")}
    assert pages == {p.stem for p in ENTRY_SCRIPTS}, "each tutorial page <name>.md runs <name>.py or <name>.sh"


RUN_TIME = re.compile(r"about (\d+) s on one\s+(?:CPU\s+)?core")


@pytest.mark.parametrize("script", ENTRY_SCRIPTS, ids=lambda p: p.name)
def test_tutorial_page_and_script_state_the_same_run_time(script):
    """The run time a tutorial page states is the one its script's header states (measured:
    CPU seconds of one run on one core)."""
    page = RUN_TIME.findall(script.with_suffix(".md").read_text())
    own = RUN_TIME.findall(script.read_text())
    assert len(page) == 1 and len(own) == 1, f"{script.stem}: state the run time once on the page and once in the script"
    assert page == own, f"{script.stem}: the page says about {page[0]} s, the script about {own[0]} s"


@pytest.mark.parametrize("script", ENTRY_SCRIPTS, ids=lambda p: p.name)
def test_tutorial_runs(script, tmp_path):
    if script.stem == "starcraft" and importlib.util.find_spec("jaxmarl") is None:
        pytest.skip("the StarCraft tutorial trains on SMAX: pip install -e '.[smax]'")
    if script.stem == "own_env" and not all(importlib.util.find_spec(m) for m in ("pettingzoo", "mpe2")):
        pytest.skip("the own-env tutorial's second env is PettingZoo's MPE2: pip install -e '.[pettingzoo]'")
    env = {
        **os.environ,
        "RUNS": str(tmp_path),  # the scripts' output folder
        "PYTHONPATH": str(ROOT),  # this checkout's fop_modules, whatever is installed
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` = this one
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MPLBACKEND": "Agg",
    }
    command = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=TUTORIAL_TIMEOUT_S)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_readme_loss_snippet_runs_as_written():
    """The README's "FOPLoss in your own TorchRL code" block, executed on its own."""
    namespace: dict = {}
    exec(compile(_readme_block("### FOPLoss in your own TorchRL code"), "README.md", "exec"), namespace)
    losses = namespace["losses"]
    assert {"loss_qvalue", "loss_actor"} <= set(losses.keys())
    assert all(bool(losses[key].isfinite().all()) for key in losses.keys())


def test_every_markdown_file_the_code_and_configs_cite_is_in_the_repo():
    """A comment or docstring that sends the reader to a ``.md`` file must name one this repository
    holds (by its path, or by its name where the path is implied); private notes do not count."""
    held = {path.relative_to(ROOT).as_posix() for path in ROOT.rglob("*.md") if ".venv" not in path.parts}
    names = {Path(path).name for path in held}
    cited = re.compile(r"[\w./-]*[\w-]+\.md\b")  # <name>.md placeholders do not match
    missing = []
    for folder, pattern in (("fop_modules", "*.py"), ("recipes", "*.py"), ("benchmarks", "*.py"),
                            ("tests", "*.py"), ("configs", "*.yaml")):
        for path in sorted((ROOT / folder).rglob(pattern)):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for match in cited.findall(line):
                    ref = match.lstrip("./")
                    if ref not in held and ("/" in ref or ref not in names):
                        missing.append(f"{path.relative_to(ROOT)}:{number}: {match}")
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_api_pages_cover_every_module():
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "fop_modules").rglob("*.py")
        if not p.name.startswith("_")
    }
    shown = {m for page in (DOCS / "api").glob("*.md") for m in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M)}
    assert modules <= shown, f"modules without an API page entry (docs/api/*.md): {sorted(modules - shown)}"


def test_docstring_rewrites():
    """docs/griffe_rst.py's own examples (it lives outside the doctest paths)."""
    pytest.importorskip("griffe", reason="the docs extra: pip install -e '.[docs]'")
    sys.path.insert(0, str(DOCS))
    try:
        import griffe_rst
    finally:
        sys.path.remove(str(DOCS))
    assert doctest.testmod(griffe_rst).failed == 0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
    return out


def test_site_builds_strict(site):
    assert (site / "index.html").is_file()
    assert (site / "api" / "loss" / "index.html").is_file()


def test_every_page_loads_in_chromium(site):
    pytest.importorskip("selenium", reason="the docs extra: pip install -e '.[docs]'")
    sys.path.insert(0, str(DOCS))
    try:
        import check_site
    finally:
        sys.path.remove(str(DOCS))
    if check_site.browser_paths() is None:
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver")
    assert check_site.check_site(site) == []


def test_loss_page_own_loop_steps_every_objective_on_slices_and_transitions():
    """docs/components/loss.md's Algorithm 1 loop, run as written: on [B, T] slices with a GRU
    actor and a learned alpha, and on transitions, every objective steps its own parameters."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from test_loss import discrete_loss, discrete_td
    from test_recurrent import A, H, N, OBS, _padded_batch

    from fop_modules import FOPLoss, FOPMixer, networks
    from fop_modules.recurrent import recurrent_discrete_actor

    text = (DOCS / "components" / "loss.md").read_text()
    after = text[text.index("Algorithm 1 with one optimiser per objective"):]
    block = re.search(r"```python\n(.*?)```", after, re.S).group(1)
    torch.manual_seed(0)
    recurrent = FOPLoss(recurrent_discrete_actor(N, OBS, A, hidden=H), networks.discrete_critic(N, OBS, A),
                        FOPMixer(N, state_dim=N * OBS, action_dim=A), action_space="discrete",
                        learn_alpha=True, alpha_init=0.5)
    for loss, replay in ((recurrent, [_padded_batch([6, 2]), _padded_batch([3, 6])]),
                         (discrete_loss(value=True, nq=2, learn_alpha=True, alpha_init=0.5), [discrete_td(), discrete_td()])):
        before = {name: p.detach().clone() for name, p in loss.named_parameters()}
        exec(compile(block, "docs/components/loss.md", "exec"), {"loss": loss, "replay": replay})
        moved = {name for name, p in loss.named_parameters() if not torch.equal(p, before[name])}
        groups = ("qvalue_network_params", "mixer_params", "actor_network_params", "log_alpha")
        assert all(any(name.startswith(group) for name in moved) for group in groups), sorted(moved)
        if loss.value_network is not None:
            assert any(name.startswith("value_network_params") for name in moved)
