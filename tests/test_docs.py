"""The documentation site builds with ``mkdocs build --strict`` (no warning: a broken link, a missing page or an
API object that no longer exists fails the suite), fast, and its API reference is generated from the docstrings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SECTIONS = ("data", "model", "train", "gradients", "logging")


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log, log
    assert seconds < 60, f"the docs build took {seconds:.0f} s (budget 60 s)"
    site = tmp_path / "site"
    # every user-guide page of the nav is there, and the reference holds the public API from the docstrings
    for page in ("guide/likelihood", "guide/gradient-conflict", "guide/forecasting", "guide/calibration",
                 "guide/multi-gpu", "guide/data", "guide/models"):
        assert (site / page / "index.html").is_file(), page
    models = (site / "reference/models/index.html").read_text(encoding="utf-8")
    assert 'id="mtpp.models.build_model"' in models and 'id="mtpp.models.mtpp.MarkedTPP.sample_next"' in models
    training = (site / "reference/training/index.html").read_text(encoding="utf-8")
    assert 'id="mtpp.training.api.fit"' in training and 'id="mtpp.training.tracking.open_trackers"' in training
    assert 'id="mtpp.tuning.tune"' in (site / "reference/tuning/index.html").read_text(encoding="utf-8")
    experiments = (site / "reference/experiments/index.html").read_text(encoding="utf-8")
    assert 'id="mtpp.records.reproduction"' in experiments and 'id="mtpp.experiments.stored_differences"' in experiments


def test_every_catalog_name_is_in_the_dataset_tables():
    """README's and the data guide's dataset tables list every name the catalog knows."""
    import re

    from mtpp.data.catalog import known_names

    for doc in (ROOT / "README.md", ROOT / "docs" / "guide" / "data.md"):
        rows = [line for line in doc.read_text().splitlines() if line.startswith("| `")]
        listed = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
        assert set(known_names()) <= listed, (doc.name, sorted(set(known_names()) - listed))


def _options_by_command() -> dict[str, set[str]]:
    """``{"train": {"--out", ...}, "data prepare": {...}, ...}``: every option of every (sub-)command."""
    import argparse

    from mtpp.cli import build_parser

    out: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            out.setdefault(path, set()).update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())

    walk(build_parser(), "")
    return out


def test_every_option_the_docs_name_is_an_option_of_that_command():
    """Each ``mtpp CMD ... --option`` on a line of the README or a docs page, and each `` `CMD --option` `` span,
    names an option ``mtpp CMD --help`` lists, so a renamed or removed option cannot stay in the docs."""
    import re

    options = _options_by_command()
    commands = "|".join(sorted((c for c in options if c), key=len, reverse=True))
    wrong = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            uses = [(m.group(1), m.group(2).split("mtpp ")[0])
                    for m in re.finditer(rf"\bmtpp ({commands})\b([^`]*)", line)]
            uses += re.findall(rf"`({commands}) (--[^`]*)`", line)
            for command, rest in uses:
                # `mtpp simulate ... --window`: an option of one of its sub-commands; `mtpp data list | describe NAME
                # | prepare IN... --out DIR`: a synopsis of the sub-commands of `data`
                group = command.split()[0] if "|" in rest else command
                known = set().union(*(o for c, o in options.items() if c == group or c.startswith(group + " ")))
                for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", rest):
                    if option not in known:  # `mtpp simulate ... --window`: an option of one of its sub-commands
                        wrong.append(f"{doc.relative_to(ROOT)}:{number}: mtpp {command} has no {option}")
    assert wrong == [], "\n".join(wrong)


def test_every_config_key_and_setting_the_docs_name_exists():
    """Each ``section.key`` in a code span, each ``--set section.key=value`` and each YAML block of run-config
    sections in the README and the docs is a key of ``mtpp/config.py`` (and the value one it accepts), so a renamed
    key cannot stay in the docs."""
    import dataclasses
    import re

    import yaml

    from mtpp.config import RunConfig, config_from_dict, load_config

    defaults = RunConfig()
    keys = {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(defaults, s))}
    files = r"\.(?:log|jsonl?|ya?ml|md|csv|tsv|pt|png|parquet|py)$"  # `train.log`, `data.md`: file names
    wrong = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for span in re.findall(r"`([^`\n]+)`", text):
            for key in re.findall(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})\.[a-z_]+)(?![\w.(/])", span):
                if key not in keys and not re.search(files, span):
                    wrong.append(f"{doc.relative_to(ROOT)}: unknown key {key} in `{span}`")
        for pair in re.findall(r"--set[ =]'?((?:%s)\.[a-z_]+=[^\s`'\]]+)" % "|".join(SECTIONS), text):
            try:
                load_config(None, [pair])
            except Exception as e:  # noqa: BLE001 - the message is the finding
                wrong.append(f"{doc.relative_to(ROOT)}: --set {pair}: {e}")
        for block in re.findall(r"```ya?ml\n(.*?)```", text, re.S):
            raw = yaml.safe_load(block)
            if isinstance(raw, dict) and raw and set(raw) <= set(SECTIONS):
                try:
                    config_from_dict(raw)
                except Exception as e:  # noqa: BLE001
                    wrong.append(f"{doc.relative_to(ROOT)}: YAML block: {e}")
            elif isinstance(raw, dict):  # a search space: dotted keys
                wrong += [f"{doc.relative_to(ROOT)}: YAML block: unknown key {k}" for k in raw
                          if isinstance(k, str) and k.split(".")[0] in SECTIONS and k not in keys]
    assert wrong == [], "\n".join(wrong)


def test_every_metric_name_the_docs_give_is_one_mtpp_writes():
    """Each metric-like name in a code span of the README and the docs (``nll_*``, ``accuracy_*``, ``horizon_*``,
    ...) is a metric of ``mtpp.evaluation.report.METRICS`` (what ``metrics.json`` holds and ``mtpp report
    --metrics`` tabulates) or one of the few other keys mtpp writes: the README named the horizon count calibration
    ``count_pce``, a key no file has (``metrics.json``: ``horizon_count_pce``)."""
    import re

    from mtpp.evaluation.report import METRICS
    from mtpp.tuning import OBJECTIVE_BINNED

    others = {
        "conflict_rate_steps",  # metrics.json "train": the number of measured steps
        "mae_tau_mean", "rmse_tau_mean",  # metrics.json, where every batch's decoder has a mean
        OBJECTIVE_BINNED.split()[-1],  # mtpp tune's objective under train.select_time_on: binned
    }
    metric = re.compile(r"(?:nll|accuracy|top\d+|mrr|ece|mce|pce|brier|mae|rmse|horizon|count|conflict)_[\w/@.]*")
    wrong = []
    for doc in DOCS:
        for span in re.findall(r"`([^`\n]+)`", doc.read_text(encoding="utf-8")):
            for token in re.split(r"[\s,]+", span):
                token = token.strip("*().:")
                if metric.fullmatch(token) and not token.endswith("_") and token not in set(METRICS) | others:
                    wrong.append(f"{doc.relative_to(ROOT)}: {token} in `{span}`")
    assert wrong == [], "\n".join(wrong)


def test_every_python_name_the_docs_give_resolves():
    """Each ``mtpp.module.name`` the README and the docs name (in prose and code spans, not only the linked API
    anchors ``mkdocs build --strict`` checks) and each ``from mtpp... import name`` resolves, so a renamed function or
    module cannot stay in the docs."""
    import importlib
    import re

    def resolves(dotted: str) -> bool:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for part in parts[i:]:
                if not hasattr(obj, part):
                    return False
                obj = getattr(obj, part)
            return True
        return False

    not_python = {"mtpp.replaced_by"}  # an MLflow tag mtpp sets (mtpp.training.tracking)
    wrong = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        names = set(re.findall(r"(?<![\w/])mtpp(?:\.[A-Za-z_]\w*)+", text))
        imports = re.findall(r"from (mtpp[\w.]*) import ([\w, ]+)", text)
        names |= {f"{module}.{n.strip()}" for module, imported in imports for n in imported.split(",") if n.strip()}
        wrong += [f"{doc.relative_to(ROOT)}: {name}" for name in sorted(names - not_python) if not resolves(name)]
    assert wrong == [], "\n".join(wrong)


def test_every_repository_file_the_docs_name_exists():
    """Each ``configs/...yaml``, ``scripts/...py``, ``tests/...py``, ``mtpp/...py`` or top-level ``NAME.md`` the README
    and the docs point a user to is in the repository."""
    import re

    wrong = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        folders = "configs|scripts|tests|mtpp|benchmarks|data"
        paths = set(re.findall(rf"(?<![\w/.~-])((?:{folders})/[\w./-]+\.(?:yaml|py|md))", text))
        paths |= set(re.findall(r"(?<![\w/.-])([A-Z][A-Z_]+\.md)\b", text))
        wrong += [f"{doc.relative_to(ROOT)}: {p}" for p in sorted(paths) if not (ROOT / p).exists()]
    assert wrong == [], "\n".join(wrong)


def test_the_data_guide_names_every_documented_time_unit():
    """The data guide's "Time units" paragraph lists, per unit, the catalog names whose source documents it (it said
    days for `ali` alone; the catalog records days for `lastfm_rmtpp` too), and no name without one."""
    import re

    from mtpp.data.catalog import CATALOG

    text = (ROOT / "docs" / "guide" / "data.md").read_text(encoding="utf-8")
    paragraph = " ".join(text.split("**Time units.**")[1].split("\n\n")[0].split())
    listed = {}
    for unit, names in re.findall(r"(second|hour|day)s for ([^;)]*)", paragraph):
        for name in re.findall(r"`([a-z0-9_]+)`", names):
            listed[name] = unit
        if "GNTPP sets" in names:
            listed.update({n: unit for n in CATALOG if n.endswith("_gntpp")})
    recorded = {name: entry.time_unit for name, entry in CATALOG.items() if entry.time_unit}
    assert listed == recorded
