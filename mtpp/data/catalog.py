"""Named datasets: where they live under the data directory, their format and provenance, and ``load_dataset``.

Data directory: the explicit ``data_dir`` argument (``--data-dir``), else ``$MTPP_DATA_DIR``, else ``./data``.
Each name has candidate folder names tried in order (a prepared split folder named like the dataset first, then
the staged source folders). Split handling in :func:`load_dataset`:

* a split folder (``split_k/``) with a ``train`` part: split ``k`` is used as is;
* a folder or file with ``train`` and ``val`` (or ``dev``/``valid``) and ``test`` parts: used as is (split 0 only);
* anything else (partial copies without a training set, single files, RMTPP full files, files whose parts
  overlap) is **auto-prepared**: all parts de-duplicated and re-split 60/20/20 into 5 seeded splits (seed 0,
  see :mod:`mtpp.data.splits`) under ``$MTPP_CACHE_DIR/prepared/<name>-<hash>`` (``~/.cache/mtpp`` when unset),
  once; a one-line warning says so and ``Dataset.notes`` records it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mtpp.data.formats import (PARTS, ReadOptions, ReadResult, is_split_folder, read_any, read_split, split_dirs,
                               what_it_says)
from mtpp.data.sequence import EventSequence, check_dtype_range
from mtpp.errors import DataError

__all__ = [
    "CatalogEntry",
    "Dataset",
    "CATALOG",
    "resolve_data_dir",
    "cache_dir",
    "find_dataset",
    "resolve_source",
    "load_dataset",
    "known_names",
    "safe_name",
    "unread_folders",
]

log = logging.getLogger(__name__)

AUTO_SEED = 0
AUTO_SPLITS = 5
AUTO_RATIOS = (0.6, 0.2, 0.2)
PREPARE_VERSION = 1


@dataclass(frozen=True)
class CatalogEntry:
    """One named dataset.

    candidates: folder names under the data directory, tried in order. Every candidate holds the same sequences
        in the same parts (``taxi``: ``easytpp_taxi`` and ``lgnjsde_taxi``); a copy that differs (another
        variant, another train/val/test assignment) is another dataset and has a name of its own
        (``amazon_cdiff``, ``taobao_cdiff``), so a name never silently reads data other than its description's.
    format: the on-disk format of the staged source (informational).
    description / source: what it is and where it comes from (see the data MANIFEST).
    options: reader options (e.g. ``{"sort": True}``).
    resplit: always auto-prepare (the source's own parts overlap or are unusable as a split).
    generated: produced by code (``synthetic_hawkes``), not read from the data directory.
    time_unit: the unit of the times as the source documents it (singular: ``"second"``, ``"hour"``, ``"day"``;
        see the data MANIFEST), ``None`` where the source does not record it (the Bosser & Ben Taieb sets were
        rescaled to (0, 10]). Likelihoods of times depend on it: ``L_T`` in another unit ``c`` times larger
        shifts by ``n log c`` per sequence of ``n`` scored events (``mtpp.models.scaling``).
    """

    name: str
    candidates: tuple[str, ...]
    format: str
    description: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    resplit: bool = False
    generated: bool = False
    time_unit: str | None = None


_CONFTPP = "Bosser & Ben Taieb preprocessing via github.com/tanguybosser/conf_tpp (MIT)"


def _e(name: str, candidates: tuple[str, ...], fmt: str, description: str, source: str, **kw: Any) -> CatalogEntry:
    return CatalogEntry(name, candidates, fmt, " ".join(description.split()), source, **kw)


_ENTRIES = [
    _e("mooc", ("mooc", "conftpp_mooc_filtered"), "bosser split folder",
       """MOOC student actions (JODIE), filtered to the 50 most frequent actions, times rescaled to (0, 10].
       Staged copy is partial: train.json of every split is missing; the union of the cal/val/test files holds
       6,234 of 7,047 sequences (311,806 events), so it is re-split 60/20/20.""", _CONFTPP),
    _e("lastfm", ("lastfm", "conftpp_lastfm_filtered"), "bosser split folder",
       """LastFM-1K listening histories, top-50 artists. Partial: train.json missing; 770 of 856 sequences
       (177,349 events) recovered from cal/val/test, re-split 60/20/20.""", _CONFTPP),
    _e("reddit", ("reddit", "conftpp_reddit_filtered_short"), "bosser split folder",
       """Reddit posts (JODIE), top-50 subreddits, short version. Partial: 3,792 of 4,278 sequences (213,831
       events) recovered, re-split 60/20/20.""", _CONFTPP),
    _e("stack_overflow", ("stack_overflow", "conftpp_stack_overflow_filtered"), "bosser split folder",
       """Stack Overflow badges (Du et al. 2016), 22 badge types. Partial: 6,004 of 7,959 sequences (427,848
       events) recovered, re-split 60/20/20.""", _CONFTPP + "; data Stack Exchange (CC BY-SA)"),
    _e("github", ("github",), "bosser split folder",
       """GitHub repository actions used in the Bosser & Ben Taieb TMLR paper. No copy of this data is staged
       (the TMLR data were on Dropbox, not in any public repository): put a prepared split folder at
       <data dir>/github to use it.""", "Bosser & Ben Taieb, TMLR 2023/2024 (not publicly staged)"),
    _e("wikipedia", ("wikipedia", "ifltpp_wikipedia"), "ifl-tpp npz",
       """Wikipedia page edits (JODIE-derived): 1,000 sequences, 157,471 events, 8,227 marks (page ids, not
       filtered to the top 50). Absolute times in seconds (up to 31 days). No splits: auto-prepared.""",
       "github.com/shchur/ifl-tpp (MIT), data from JODIE (Kumar et al. 2019)", time_unit="second"),
    _e("retweet", ("retweet", "easytpp_retweet"), "EasyTPP JSON",
       """Retweet cascades, 3 user-popularity marks, times in seconds over 7 days. Partial: train missing;
       valid+test (4,000 sequences, 433,986 events) re-split 60/20/20.""",
       "EasyTPP benchmark (Xue et al. 2024) via github.com/TanXZfra/Time-aware-Hawkes-Attention",
       time_unit="second"),
    _e("mimic2", ("mimic2", "rmtpp_mimic2"), "RMTPP text pairs",
       """MIMIC-II ICU visits (Du et al. 2016): 650 sequences, 2,419 events (644 distinct sequences, 2,403 events:
       6 admissions repeat another's events and are removed), 75 diagnosis marks (1-based in the files, read as
       0-based). Read from the full time.txt/event.txt and re-split 60/20/20 (the 5 folds have
       no validation set). MIMIC-II is PhysioNet credentialed data: research use only.""",
       "github.com/dunan/NeuralPointProcess (no licence)"),
    _e("mimic2_ifl", ("mimic2_ifl", "jointtpp_mimic_ii"), "torch.save zip",
       """MIMIC-II, ifl-tpp version: 715 sequences (644 distinct), 2,662 events, 75 marks, each with a window
       [0, t_end] kept as window_end. No splits: auto-prepared.""",
       "github.com/waghmaregovind/joint_tpp (MIT)"),
    _e("mimic2_thp", ("mimic2_thp", "thpformat_mimic"), "THP pickle",
       """MIMIC-II, THP/NHP version: the files are the 5 folds concatenated (train overlaps dev/test), so the
       644 distinct sequences are always re-split 60/20/20.""",
       "github.com/TanXZfra/Time-aware-Hawkes-Attention (THP data_mimic)", resplit=True),
    _e("taxi", ("taxi", "easytpp_taxi", "lgnjsde_taxi"), "EasyTPP JSON",
       """NYC taxi pick-ups/drop-offs in 5 boroughs (10 marks), times in hours: 2,000 sequences, 74,078 events,
       fixed train/valid/test 1,400/200/400.""",
       "EasyTPP benchmark (Xue et al. 2024) via github.com/TanXZfra/Time-aware-Hawkes-Attention",
       time_unit="hour"),
    _e("taobao", ("taobao", "easytpp_taobao"), "EasyTPP JSON",
       """Taobao user clicks, 17 item categories: 2,000 sequences, 113,410 events, fixed train/valid/test
       1,300/200/500.""",
       "EasyTPP benchmark (Xue et al. 2024) via github.com/TanXZfra/Time-aware-Hawkes-Attention"),
    _e("taobao_lgnjsde", ("taobao_lgnjsde", "lgnjsde_taobao"), "EasyTPP pickle",
       """Taobao, the LGNJSDE/cdiff version (2,000 sequences, 115,397 events, absolute times ~151,000; only
       partial overlap with the EasyTPP version), fixed train/dev/test 1,300/200/500.""",
       "github.com/cgao-comp/LGNJSDE (no licence)"),
    _e("taobao_cdiff", ("taobao_cdiff", "cdiff_taobao"), "EasyTPP pickle",
       """Taobao, the cdiff version: the same 2,000 sequences (115,397 events, absolute times ~151,000) as
       taobao_lgnjsde, but assigned to train/dev/test 1,300/200/500 differently (its test NLLs are not comparable
       with taobao_lgnjsde's); fixed split.""", "github.com/networkslab/cdiff (no licence)"),
    _e("stackoverflow_easytpp", ("stackoverflow_easytpp", "easytpp_stackoverflow"), "EasyTPP JSON",
       """Stack Overflow badges, EasyTPP version: 2,203 sequences, 142,777 events, 22 marks, fixed
       train/valid/test 1,401/401/401.""",
       "EasyTPP benchmark (Xue et al. 2024) via github.com/TanXZfra/Time-aware-Hawkes-Attention"),
    _e("amazon", ("amazon", "easytpp_amazon"), "EasyTPP JSON",
       """Amazon product reviews, 16 categories. Partial: train missing; valid+test (2,773 sequences, 125,043
       events) re-split 60/20/20.""",
       "EasyTPP benchmark (Xue et al. 2024) via github.com/TanXZfra/Time-aware-Hawkes-Attention"),
    _e("amazon_cdiff", ("amazon_cdiff", "cdiff_amazon"), "EasyTPP pickle",
       """Amazon product reviews, the cdiff version (a smaller variant than amazon's, times not starting at 0),
       16 categories. Partial: train missing; dev+test (800 sequences, 38,928 events) re-split 60/20/20.""",
       "github.com/networkslab/cdiff (no licence)"),
    _e("earthquake", ("earthquake", "residualtpp_earthquake"), "EasyTPP pickle",
       """Earthquakes (EasyTPP Earthquake), 7 magnitude classes: 4,296 sequences, 70,723 events, fixed
       train/dev/test 3,000/400/896.""", "github.com/ruoxinyuan/ResidualTPP (Apache-2.0)"),
    _e("yelp_toronto", ("yelp_toronto", "ifltpp_yelp_toronto"), "ifl-tpp npz",
       """Yelp check-ins in Toronto, unmarked (every event gets mark 0, 1 mark): 300 sequences, 215,146
       events, seconds. No splits: auto-prepared.""", "github.com/shchur/ifl-tpp (MIT)", time_unit="second"),
    _e("mooc_gntpp", ("mooc_gntpp", "gntpp_mooc"), "GNTPP pickle",
       """MOOC, GNTPP version: 97 unfiltered action marks, seconds. Partial: train missing; val+test (2,537
       sequences, 109,352 events) re-split 60/20/20.""", "github.com/EDAPINENUT/GNTPP (no licence)",
       time_unit="second"),
    _e("stack_overflow_gntpp", ("stack_overflow_gntpp", "gntpp_stackoverflow"), "GNTPP pickle",
       """Stack Overflow, GNTPP version: 22 marks, seconds. Partial: train missing; val+test (2,000 sequences,
       129,854 events) re-split 60/20/20.""", "github.com/EDAPINENUT/GNTPP (no licence)",
       time_unit="second"),
    _e("stack_overflow_rmtpp", ("stack_overflow_rmtpp", "rmtpp_stack_overflow"), "RMTPP text pairs",
       """Stack Overflow, RMTPP version (Unix seconds). Partial: times exist only for the 5 test folds; their
       union (4,468 distinct sequences, 22 marks) is re-split 60/20/20.""",
       "github.com/dunan/NeuralPointProcess (no licence)", time_unit="second"),
    _e("book_order", ("book_order", "rmtpp_book_order"), "RMTPP text pairs",
       """NYSE order book (RMTPP 'Financial'), 2 marks (buy/sell). The full time.txt is missing, and each of the
       5 folds cuts the one stream into 200 chunks at other points (chunks of different folds share events), so
       fold 1's 200 chunks (100 train + 100 test, 414,800 events) are read and re-split 60/20/20.""",
       "github.com/dunan/NeuralPointProcess (no licence)", options={"rmtpp_fold": 1}),
    _e("ali", ("ali", "rmtpp_ali"), "RMTPP text pairs",
       """Undocumented extra RMTPP set (days, 1,754 marks): 4,136 sequences, train/test only, re-split.""",
       "github.com/dunan/NeuralPointProcess (no licence)", time_unit="day"),
    _e("lastfm_rmtpp", ("lastfm_rmtpp", "rmtpp_lastfm"), "RMTPP text pairs",
       """LastFM, RMTPP version (Du et al. 2016), fractional days. Partial: only the split_1000 test pair has
       times (403 sequences, 73,889 events, re-split 60/20/20); mark ids (artists, 1-based in the files, read as
       0-based) run to 3,144, of which 2,372 occur (remap_marks maps them to 0..2371).""",
       "github.com/dunan/NeuralPointProcess (no licence)", time_unit="day"),
    _e("twitter", ("twitter", "rmtpp_twitter"), "RMTPP text pairs",
       """Four RMTPP Twitter topic sets (bolly, fight, movie, politics), 2 marks, Unix seconds. The files are not
       time-sorted: sequences are sorted on reading (counted in the notes) and re-split.""",
       "github.com/dunan/NeuralPointProcess (no licence)", options={"sort": True}, time_unit="second"),
    _e("mathoverflow", ("mathoverflow", "lgnjsde_mathof"), "EasyTPP pickle",
       """Undocumented LGNJSDE set (name suggests MathOverflow), 16 marks, times look log-transformed; fixed
       train/dev/test.""", "github.com/cgao-comp/LGNJSDE (no licence)"),
    _e("ubuntu", ("ubuntu", "lgnjsde_ubuntu"), "EasyTPP pickle",
       """Undocumented LGNJSDE set (name suggests AskUbuntu), 11 marks, times look log-transformed; fixed
       train/dev/test.""", "github.com/cgao-comp/LGNJSDE (no licence)"),
    _e("nymvc", ("nymvc", "lgnjsde_nymvc"), "EasyTPP pickle",
       """Undocumented LGNJSDE set (name suggests New York motor-vehicle collisions), 5 marks, times look
       log-transformed: 200 sequences, 12,736 events, fixed train/dev/test 120/40/40.""",
       "github.com/cgao-comp/LGNJSDE (no licence)"),
    _e("synthetic_hawkes", (), "bosser split folder (generated)",
       """Built-in 5-mark exponential-kernel Hawkes process with known parameters, generated on first use into
       the cache (mtpp.data.synthetic); its exact log-likelihood is the reference a model can be compared to.""",
       "generated by mtpp.data.synthetic", generated=True),
]

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in _ENTRIES}


def time_unit_of(name_or_path: str | Path | None) -> str | None:
    """The documented time unit of a catalog dataset (``CatalogEntry.time_unit``), addressed by its name or by a
    path whose last part is one of its folder names (``.../easytpp_taxi``); ``None`` for anything else."""
    if name_or_path is None:
        return None
    key = str(name_or_path)
    entry = CATALOG.get(key)
    if entry is None:
        entry = next((e for e in _ENTRIES if Path(key).name in e.candidates), None)
    return entry.time_unit if entry else None


def time_unit_text(unit: str | None, per: bool = False) -> str:
    """How a report names the time unit: ``"hours"``, or ``"data units"`` where none is recorded; with ``per``,
    the denominator of a rate: ``"hour"`` / ``"time unit"`` (``events per hour``)."""
    if unit:
        return unit if per else f"{unit}s"
    return "time unit" if per else "data units"


@dataclass
class Dataset:
    """One split of a dataset, ready for training.

    train, val, test: the sequences of each part.
    num_marks: number of mark types ``K`` (marks are in ``[0, K)``).
    name: catalog name (or the folder/file name for a path).
    source: the folder or file the sequences were read from (the prepared folder when auto-prepared).
    notes: what was done on the way (auto-preparation, sorting, skipped files, ...).
    split: the split index used.
    options: how :func:`load_dataset` read it, ``{"use_window": ..., "sort": ..., "remap_marks": ...,
        "data_dir": ...}`` (its arguments), so that ``fit(model, ds)`` records them in the run's ``data`` section
        and later commands read the same data again; ``None`` for a ``Dataset`` built by hand (its run cannot be
        reloaded from a configuration, and says so).
    time_unit: the catalog's :attr:`CatalogEntry.time_unit` (``None``: not recorded, e.g. a user's own file).
    mark_ids: the source's own id of each mark ``0..K-1`` where the marks were remapped (``remap_marks``, or a
        folder prepared with ``--remap-marks``: its ``args.json`` ``mark_ids``), so that outputs can give them
        back; ``None`` where the ids are the source's (not remapped, or already ``0..K-1``).
    """

    train: list[EventSequence]
    val: list[EventSequence]
    test: list[EventSequence]
    num_marks: int
    name: str
    source: str
    notes: list[str] = field(default_factory=list)
    split: int = 0
    options: dict[str, Any] | None = None
    time_unit: str | None = None
    mark_ids: list[int] | None = None

    def check_dtype(self, dtype: Any) -> None:
        """Refuse (``DataError``) when any train/val/test time or window end is beyond the largest finite value
        of ``dtype`` (``torch.float32``, ``"float32"``, ...), naming the sequences and what works (float64,
        dropping or rescaling them). See :func:`mtpp.data.sequence.check_dtype_range`."""
        check_dtype_range({"train": self.train, "val": self.val, "test": self.test}, dtype,
                          source=f"{self.name} ({self.source}, split {self.split})")

    def summary(self) -> str:
        n = [len(self.train), len(self.val), len(self.test)]
        return f"{self.name} (split {self.split}): train/val/test {n[0]}/{n[1]}/{n[2]} sequences, {self.num_marks} marks"


def safe_name(name: str, fallback: str = "data") -> str:
    """``name`` made safe as one folder name: characters other than letters, digits, ``_``, ``-`` and ``.``
    become ``_``, leading dots are dropped (no hidden, ``.`` or ``..`` folder), at most 64 characters;
    ``fallback`` when nothing is left. A name never becomes a path (no separator survives)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".")[:64].rstrip(".")
    return cleaned if cleaned.strip("_") else fallback


def known_names() -> list[str]:
    return list(CATALOG)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else ``$MTPP_DATA_DIR``, else ``./data`` (not checked for existence); a leading ``~`` is the
    home folder (as in a shell), also where no shell expanded it (a config's ``data.data_dir``, a quoted value)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("MTPP_DATA_DIR")
    return Path(env).expanduser() if env else Path("data")


def _data_dir_origin(data_dir: str | Path | None) -> str:
    if data_dir is not None:
        return "given"
    return "MTPP_DATA_DIR" if os.environ.get("MTPP_DATA_DIR") else "default ./data"


def cache_dir() -> Path:
    """``$MTPP_CACHE_DIR`` (a leading ``~`` is the home folder), else ``~/.cache/mtpp``."""
    from mtpp.data.synthetic import default_cache_dir

    return default_cache_dir()


def find_dataset(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The first existing candidate folder of a catalog name under the data directory, else ``None``."""
    entry = CATALOG[name]
    root = resolve_data_dir(data_dir)
    for cand in entry.candidates:
        p = root / cand
        if p.exists():
            return p
    return None


def unread_folders(data_dir: str | Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The folders of the data directory that no catalog name reads, for ``mtpp data list``: ``(unnamed,
    second_copies)``. ``unnamed``: folder names that are no name's candidate (a staged copy without a name, such
    as ``rmtpp_yelp``, or the user's own prepared folders), readable by folder name or path only.
    ``second_copies``: ``{folder: name}`` for a candidate that its name does not read because an earlier candidate
    was found (``lgnjsde_taxi`` behind ``easytpp_taxi``). Hidden folders are left out; ``([], {})`` when the
    directory does not exist."""
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        return [], {}
    owner = {c: e.name for e in _ENTRIES for c in e.candidates}
    unnamed, second = [], {}
    for folder in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = owner.get(folder)
        if name is None:
            unnamed.append(folder)
        elif find_dataset(name, root) != root / folder:
            second[folder] = name
    return unnamed, second


def unused_data_dir(name: str, data_dir: str | Path) -> str | None:
    """Why a data directory given for ``name`` would play no part in finding it (``None``: it would): a generated
    catalog entry (``synthetic_hawkes``) or an existing path. ``train`` / ``tune`` refuse a ``--data-dir`` that
    would be passed over, with the setting that reads it (a folder of data given as ``--data-dir`` trained on the
    built-in synthetic data, silently)."""
    text = os.path.expanduser(str(name))
    if text in CATALOG and CATALOG[text].generated:
        why = f"data.name is {text!r}, which mtpp generates (no data directory is read)"
    elif text not in CATALOG and Path(text).exists():
        why = f"data.name is the path {text!r}"
    else:
        return None
    root = Path(data_dir).expanduser()
    catalogued = root.is_dir() and any(find_dataset(n, root) is not None for n in CATALOG if not CATALOG[n].generated)
    fix = ("--set data.name=NAME for a dataset in it (mtpp data list --data-dir " + str(data_dir) + ")" if catalogued
           else f"--set data.name={data_dir}")
    return f"--data-dir {data_dir} would not be used: {why}; to read the data there, {fix}"


def _unknown(name: str) -> DataError:
    import difflib

    close = difflib.get_close_matches(name.lower(), known_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DataError(f"unknown dataset {name!r}; {hint}known names: {', '.join(known_names())} "
                     "(or give a path to a file or folder)")


def resolve_source(name_or_path: str | Path, data_dir: str | Path | None = None) -> tuple[str, Path, CatalogEntry | None]:
    """``(name, path, entry)`` for a catalog name, a folder name under the data directory, or a path (a leading
    ``~`` is the home folder: a config's ``data.name: ~/data/x.csv`` is not expanded by any shell)."""
    text = str(name_or_path)
    if text.startswith("~"):
        text = os.path.expanduser(text)
    if text in CATALOG:
        entry = CATALOG[text]
        if entry.generated:
            from mtpp.data.synthetic import ensure_synthetic_dataset

            return text, Path(ensure_synthetic_dataset()), entry
        root = resolve_data_dir(data_dir)
        if not root.is_dir():
            state = "is a file, not a folder" if root.exists() else "does not exist"
            raise DataError(f"data directory {root} ({_data_dir_origin(data_dir)}) {state}; set --data-dir "
                            f"or MTPP_DATA_DIR (looked for {' or '.join(entry.candidates)})")
        path = find_dataset(text, data_dir)
        if path is None:
            extra = f" {entry.description}" if not entry.candidates[1:] else ""
            raise DataError(f"dataset {text!r} not found in {root}: looked for "
                            f"{', '.join(str(root / c) for c in entry.candidates)}.{extra}")
        return text, path, entry
    p = Path(text)
    if p.exists():
        return safe_name(p.name.lstrip(".").split(".")[0]), p, None
    root = resolve_data_dir(data_dir)
    if os.sep not in text and (root / text).exists():
        return safe_name(text), root / text, None
    if os.sep in text or text.startswith(".") or Path(text).suffix.lower().lstrip(".") in _FILE_SUFFIXES:
        raise DataError(f"no such file or folder (in {Path.cwd()}, nor in the data directory {root})", source=text)
    raise _unknown(text)


_FILE_SUFFIXES = ("json", "gz", "pkl", "pickle", "pt", "pth", "npz", "csv", "tsv", "txt", "parquet")
"""Name endings that make a bare argument a file name, never a catalog name (``missing.json``)."""


def _has_split(res: ReadResult, split: int) -> bool:
    return f"split_{split}/train" in res.parts


def resplits(entry: CatalogEntry | None, parts: Iterable[str]) -> bool:
    """Whether ``load_dataset`` re-splits data read into these part names (``ReadResult.parts``): an entry that
    always does (``resplit``), a split folder (parts ``split_k/<part>``) without a train part, or plain parts that
    are not a full train / val / test split."""
    parts = set(parts)
    if entry is not None and entry.resplit:
        return True
    if any("/" in k for k in parts):
        return not any(k.endswith("/train") for k in parts)
    return not set(PARTS) <= parts


def load_dataset(
    name_or_path: str | Path,
    split: int = 0,
    data_dir: str | Path | None = None,
    *,
    use_window: bool = False,
    remap_marks: bool = False,
    sort: bool = False,
    progress: bool = False,
) -> Dataset:
    """Load split ``split`` of a named dataset (see :data:`CATALOG`) or of a file/folder path.

    Raises ``DataError`` for unknown names (listing the known ones), a missing data directory (saying where it
    looked), a split that does not exist, or any bad sequence. ``use_window`` attaches a split folder's common
    window end (``args.json`` ``window``) to every sequence. ``sort`` sorts a sequence whose times are out of
    order (counted in ``Dataset.notes``) instead of raising. ``remap_marks`` maps the observed mark ids to
    ``0..K-1`` (see :class:`~mtpp.data.formats.ReadOptions`; an auto-prepared folder is remapped once, over all
    parts, so every split shares the map). Call :meth:`Dataset.check_dtype` with the run's dtype before training.
    """
    from mtpp.data.checks import shown

    if name_or_path is None or not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        table = " (a table in memory: write it to a file, df.to_csv(path, index=False) with columns seq_id, time, " \
                "mark, and pass the path)" if hasattr(name_or_path, "to_csv") else ""
        raise DataError(f"load_dataset needs a dataset name or a path to a file or folder, got "
                        f"{shown(name_or_path)}{table}; known names: {', '.join(known_names())}")
    if isinstance(split, (bool, np.bool_)) or not isinstance(split, (int, np.integer)) or split < 0:
        raise DataError(f"split must be a non-negative integer, got {shown(split)}")
    split = int(split)  # a numpy integer (for split in np.arange(5)) as the int every record holds
    for key, value in (("use_window", use_window), ("remap_marks", remap_marks), ("sort", sort)):
        if not isinstance(value, bool):
            raise DataError(f"{key} must be True or False, got {value!r}")
    options = {"use_window": use_window, "sort": sort, "remap_marks": remap_marks,
               "data_dir": None if data_dir is None else str(data_dir)}
    ds = _load(name_or_path, split, data_dir, use_window, remap_marks, sort, progress)
    ds.options = options
    ds.time_unit = time_unit_of(name_or_path)
    return ds


def _load(name_or_path: str | Path, split: int, data_dir: str | Path | None, use_window: bool, remap_marks: bool,
          sort: bool, progress: bool) -> Dataset:
    name, path, entry = resolve_source(name_or_path, data_dir)
    opts = ReadOptions(**{**(entry.options if entry else {}), **({'sort': True} if sort else {})},
                       use_window=use_window, remap_marks=remap_marks)
    notes: list[str] = []
    if entry is not None and entry.resplit:
        path = _auto_prepare(name, path, opts, notes, reason="its own parts overlap, always re-split")
    elif not is_split_folder(path):
        res = read_any(path, options=opts, progress=progress)
        if not resplits(None, res.parts):  # a full train / val / test split of its own
            if split != 0:
                raise DataError(f"{name} has one fixed train/val/test split (split 0), not split {split}",
                                source=str(path))
            _check_not_empty(res.parts, "", path)
            return Dataset(res.parts["train"], res.parts["val"], res.parts["test"], res.num_marks, name,
                           str(path), res.notes, 0, mark_ids=_original_ids(res.meta.get("mark_ids")))
        missing = [p for p in ("train", "val", "test") if p not in res.parts]
        path = _auto_prepare(name, path, opts, notes, reason=f"no {'/'.join(missing)} part", result=res)
    if lacks_train_part(path):
        path = _auto_prepare(name, path, opts, notes, reason="no train part in its split folders")
    res = read_split(path, split, options=opts, progress=progress)
    if not _has_split(res, split):
        raise DataError(f"split_{split} has no train part", source=str(path))
    p = f"split_{split}/"
    val = res.parts.get(p + "val", res.parts.get(p + "cal"))
    if val is None or p + "test" not in res.parts:
        raise DataError(f"split_{split} needs train, val and test files", source=str(path))
    _check_not_empty({"train": res.parts[p + "train"], "val": val, "test": res.parts[p + "test"]}, p, path)
    return Dataset(res.parts[p + "train"], val, res.parts[p + "test"], res.num_marks, name, str(path),
                   notes + [n for n in res.notes if not _said(n, notes)], split,
                   mark_ids=_original_ids(_compose(_folder_mark_ids(path), res.meta.get("mark_ids"))))


def _folder_mark_ids(path: Path) -> Any:
    """A split folder's ``args.json`` ``mark_ids`` (written by ``mtpp data prepare --remap-marks`` and by an
    auto-preparation with ``remap_marks``), else ``None``."""
    args = path / "args.json"
    if not args.is_file():
        return None
    try:
        return json.loads(args.read_text(encoding="utf-8")).get("mark_ids")
    except (OSError, ValueError, AttributeError):
        return None


def _compose(folder_ids: Any, read_ids: Any) -> Any:
    """The source's id of each model mark when a folder whose ``args.json`` maps its marks to the source's
    (``folder_ids``: prepared with ``--remap-marks``) is read with ``remap_marks`` too (``read_ids``: the folder's
    id of each model mark): ``folder_ids[read_ids]``; either alone where the other is absent."""
    if not isinstance(read_ids, list):
        return folder_ids
    if not isinstance(folder_ids, list):
        return read_ids
    try:
        return [folder_ids[i] for i in read_ids]
    except (IndexError, TypeError):  # a map that does not fit (args.json edited by hand): the read's own
        return read_ids


def _original_ids(ids: Any) -> list[int] | None:
    """``ids`` as the source's mark ids of ``0..K-1``, or ``None`` when they are no map (absent, not integers, or
    already ``0..K-1``)."""
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return None
    return None if ids == list(range(len(ids))) else ids


def _said(note: str, notes: list[str]) -> bool:
    """Whether ``note`` says what one of ``notes`` says about another source (the split folder prepared from a
    user's file repeats the file's mark note: ``<file>: mark ids run 1..4 ...`` / ``<split_0>: mark ids ...``)."""
    return any(what_it_says(n) == what_it_says(note) for n in notes)


def _check_not_empty(parts: dict[str, list], prefix: str, path: Path) -> None:
    """An empty train, val or test part is an error: training on nothing, or early stopping that scores nothing
    (every validation NLL null, "best epoch 1" silently), or metrics of nothing."""
    for part in ("train", "val", "test"):
        if not parts[part]:
            raise DataError(f"the {prefix}{part} part is empty (0 sequences)", source=str(path))


def known_splits(entry: CatalogEntry | None, path: Path) -> list[int] | None:
    """The split indices ``load_dataset`` accepts for the source at ``path``, known without reading its data: the
    ``AUTO_SPLITS`` seeded splits of a source that is always re-split or a split folder without a train part, the
    ``split_k`` folders of a split folder; ``None`` where only reading it would tell (plain files, which give one
    fixed split or are re-split depending on their parts)."""
    if entry is not None and entry.resplit:
        return list(range(AUTO_SPLITS))
    if not is_split_folder(path):
        return None
    if lacks_train_part(path):
        return list(range(AUTO_SPLITS))
    return [int(d.name.split("_")[1]) for d in split_dirs(path)]


def lacks_train_part(path: Path) -> bool:
    """A split folder none of whose ``split_*`` holds a ``train`` file (the public Bosser & Ben Taieb copies):
    ``load_dataset`` re-splits it (``_auto_prepare``); ``mtpp data list`` says so."""
    return not any(any(d.glob("train.json*")) for d in path.glob("split_*"))


_LATER_OPTIONS = ("rmtpp_fold",)
"""``ReadOptions`` fields added after folders were first cached: left out of the cache key while unset."""


def _auto_prepare(name: str, path: Path, opts: ReadOptions, notes: list[str], *, reason: str,
                  result: ReadResult | None = None) -> Path:
    """Prepare (once) the seeded 60/20/20 split folder of a source into the cache; return its path."""
    from mtpp.data.splits import prepare_sequences, source_fingerprint

    # options added later count only when set, so the folders prepared before them keep their keys
    items = sorted((k, v) for k, v in opts.__dict__.items() if not (k in _LATER_OPTIONS and v is None))
    if _holds_tables(path):  # folders cached before the tables' seq_ids were kept (split_k/args.json) are not reused
        items.append(("seq_ids", True))
    key = source_fingerprint(path, AUTO_SEED, AUTO_SPLITS, AUTO_RATIOS, items, PREPARE_VERSION)
    out = cache_dir() / "prepared" / f"{safe_name(name)}-{key}"
    def use_prepared(level: int, message: str) -> Path:
        notes.append(f"auto-prepared from {path} ({reason}): {out}")
        notes.extend(_prepared_notes(out))
        log.log(level, message)
        return out

    if out.is_dir() and (out / "args.json").exists():
        return use_prepared(logging.INFO, f"{name}: using the auto-prepared splits in {out}")
    from mtpp.data.synthetic import writable_cache_dir

    writable_cache_dir()  # before reading the source: a cache folder that cannot be written, said as such
    res = result if result is not None else read_any(path, options=opts)
    try:
        report = prepare_sequences(res, out, seed=AUTO_SEED, num_splits=AUTO_SPLITS, ratios=AUTO_RATIOS)
    except DataError:
        if out.is_dir() and (out / "args.json").exists():  # lost a race with a concurrent preparation
            report = None
        else:
            raise
    if report is None:  # another process prepared the same folder meanwhile: say so, not that this one did
        return use_prepared(logging.WARNING, f"{name}: {path} ({reason}): using the splits another process "
                                             f"auto-prepared meanwhile in {out}")
    msg = (f"{name}: {path} ({reason}): auto-prepared {AUTO_SPLITS} seeded 60/20/20 splits (seed {AUTO_SEED}"
           + (f", {report.num_sequences} distinct sequences" if report else "")
           + (f", {report.duplicates_phrase()}" if report and report.duplicates else "")
           + f") in {out}")
    log.warning(msg)
    notes.append(msg)
    notes.extend(_prepared_notes(out))
    return out


def _holds_tables(path: Path) -> bool:
    """Whether ``path`` is, or directly holds, a CSV / TSV / Parquet table: the only sources whose sequences have
    names (``seq_id``), which a prepared folder keeps; other sources' cache keys are as before."""
    from mtpp.data.formats import detect_format

    files = [path] if path.is_file() else (sorted(path.iterdir()) if path.is_dir() else [])
    return any(f.is_file() and detect_format(f) in ("table", "parquet") for f in files)


def _prepared_notes(folder: Path) -> list[str]:
    """What reading the source did on the way (sequences sorted, files skipped), kept in the prepared folder's
    ``args.json`` ``notes`` so that every later run loading the cached splits says it too."""
    try:
        notes = json.loads((folder / "args.json").read_text(encoding="utf-8")).get("notes") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in notes]
