"""``mtpp train CONFIG --out DIR``: train one configuration (or each of its ``variants``) into a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  mtpp train configs/quickstart.yaml --out runs/quickstart
  mtpp train configs/quickstart.yaml --out runs/q1 --set train.max_epochs=1 --set model.decoder=lnm
  mtpp train --out runs/q1 --resume                  # continue an interrupted run from its checkpoint.pt
  mtpp train results/paper_table1/reddit/rmtpp-base-sum/split0-seed0.json --out runs/check   # retrain a record

--set section.key=value overrides the config (values are YAML scalars: 5, 1e-3, true, lnm, [1, 2]).
Sections: data, model, train, gradients, logging (see mtpp/config.py for every key).
A config with a 'variants:' list trains one run per variant into DIR/<variant>/ and prints a comparison table;
--set applies to every variant, after its own settings (a replaced variant setting is printed).
The run directory holds config.yaml (with the data's location and fingerprints), log.jsonl, train.log (the console
output), checkpoint.pt, best.pt, metrics.json, arrays_{val,test}.json. One command writes a folder at a time.
--resume uses the recorded data and refuses other data; -q is not stored, so a later --resume talks again.
CONFIG may be a grid cell's result record (results/<experiment>/<cell>.json): its cell is trained again on the
record's data (other data are refused) and the last line says whether the run reproduced the record's metrics."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (or each variant of a config) into a run directory",
        description="Train the configuration CONFIG (YAML; defaults if omitted) into the run directory --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, nargs="?",
                   help="run configuration YAML, a run's config.yaml or a result record (default: every default)")
    p.add_argument("--out", type=Path, required=True, help="run directory (variants: one sub-folder each)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_epochs=5; repeatable",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in DIR")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar, no per-epoch lines, no summary on the console (train.log keeps them)")
    p.add_argument("--data-dir", help="where the datasets are (default: $MTPP_DATA_DIR, then ./data; --resume: the "
                   "data recorded in the run)")
    p.add_argument(
        "--variant", action="append", default=[], metavar="NAME",
        help="train only this variant of the config's variants list; repeatable",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp.config import load_config, read_config_file, variant_name, variants_with_overrides
    from mtpp.errors import ConfigError

    overrides = list(args.overrides)
    if args.quiet:
        overrides = ["logging.quiet=true", "logging.progress=false", *overrides]
    config_path = args.config
    if config_path is None and args.resume:  # resume with the stored configuration (one run, or the variants')
        stored = [args.out / name for name in ("config.yaml", "variants.yaml") if (args.out / name).is_file()]
        if not stored:
            raise ConfigError(f"--resume: {args.out} holds no run (no config.yaml or variants.yaml); give CONFIG "
                              "to start one")
        config_path = stored[0]
    parsed = read_config_file(config_path) if config_path is not None else None  # read once, used thrice
    cfg = load_config(config_path, overrides, parsed=parsed)
    if args.data_dir is not None and not args.resume:
        from mtpp.training.setup import refuse_unused_data_dir

        refuse_unused_data_dir(cfg, args.data_dir)
    if not args.resume:
        _warn_unreproducible_record(config_path, parsed, cfg)
    record, expected_data = _retrained_record(config_path, parsed, cfg)
    if args.variant and not cfg.variants:
        raise ConfigError("--variant: the config has no 'variants' list")
    if cfg.variants:
        from dataclasses import replace

        from mtpp.training.trainer import run_variants

        # --set wins over a variant's own value; the variants as trained (and only the ones asked for with
        # --variant) are what variants.yaml keeps for a later --resume
        given = cfg.variants
        cfg = replace(cfg, variants=variants_with_overrides(given, args.overrides)[0])
        variants = cfg.variants
        if args.variant:
            names = [variant_name(v) for v in variants]
            unknown = sorted(set(args.variant) - set(names))
            if unknown:
                raise ConfigError(f"--variant: unknown {', '.join(unknown)}; valid: {', '.join(names)}")
            variants = [v for v in variants if variant_name(v) in args.variant]
            if not args.resume:  # the folder's variants.yaml: what a later --resume continues
                cfg = replace(cfg, variants=variants)
        chosen = {variant_name(v) for v in variants}
        for note in variants_with_overrides([v for v in given if variant_name(v) in chosen], args.overrides)[1]:
            print(note, file=sys.stderr)
        _name_the_files_mistakes(cfg, variants, config_path)
        run_variants(cfg, variants, args.out, resume=args.resume, data_dir=args.data_dir, overwrite=args.overwrite)
        return 0
    from mtpp.training.trainer import fit

    _name_the_files_mistakes(cfg, None, config_path)
    # an interrupted run says how to resume it; a record's resume names the record, which the comparison reads
    metrics = fit(cfg, args.out, resume=args.resume, data_dir=args.data_dir, overwrite=args.overwrite,
                  expected_data=expected_data, resume_config=config_path if record is not None else None)
    if record is not None:
        from mtpp.config import read_yaml
        from mtpp.records import describe_reproduction, reproduction

        run_config = read_yaml(args.out / "config.yaml") or {}
        print(describe_reproduction(str(config_path), reproduction(record, metrics, run_config)), file=sys.stderr)
    return 0


def _retrained_record(config_path: Path | None, raw: dict | None, cfg: Any) -> tuple[dict | None, dict | None]:
    """``(record, its data record)`` when CONFIG is a grid cell's result record (``mtpp.records``) trained again
    with its own settings: the run must read the record's data (``fit``'s ``expected_data``) and is compared with
    the record when it ends (``mtpp.records.reproduction``). ``raw``: CONFIG's parsed content
    (``mtpp.config.read_config_file``). ``(None, None)`` for a run configuration; with a note, for a record whose
    settings ``--set`` changed (a new run, nothing to compare with): ``(None, its data record)`` when no ``data.*``
    setting changed (the new run still reads the record's data), else ``(None, None)``."""
    from mtpp.config import is_result_record
    from mtpp.errors import ConfigError
    from mtpp.experiments import stored_differences

    if config_path is None or not is_result_record(raw):  # a record whatever its file name
        return None, None
    info, metrics = raw["config"].get("run_info"), raw.get("metrics")
    fields = {"config.run_info": info, "metrics": metrics}  # what the data check and the comparison read
    if isinstance(info, dict):
        fields["config.run_info.data"] = info.get("data")
    if isinstance(metrics, dict):
        fields.update({f"metrics.{part}": metrics.get(part) for part in ("train", "val", "test")})
    bad = [name for name, value in fields.items() if value is not None and not isinstance(value, dict)]
    if bad:
        raise ConfigError(f"{config_path}: a result record whose {', '.join(bad)} is not a mapping (mtpp.records): "
                          "not a record mtpp wrote, or edited by hand")
    changed = stored_differences(raw["config"], cfg.to_dict(), str(config_path))
    data = (info or {}).get("data")
    if changed:
        # other training or model settings read the same data: still the record's (another data.* setting
        # selects other data, resolved as usual)
        same_data = not any(c.startswith("data.") or " unreadable (" in c for c in changed)
        print(f"note: {config_path} is a result record trained here with other settings ({'; '.join(changed[:3])}"
              f"{'; ...' if len(changed) > 3 else ''}): a new run, not compared with the record"
              f"{', on its data' if same_data and data else ''}", file=sys.stderr)
        return None, data if same_data else None
    print(f"retraining the result record {config_path}: on its data, compared with it when the run ends",
          file=sys.stderr)
    return raw, data


def _warn_unreproducible_record(config_path: Path | None, raw: dict | None, cfg: Any) -> None:
    """One warning when CONFIG is a run's ``config.yaml`` that does not determine that run, so that training it again
    gives another one: its initial weights were a model passed to ``fit(model, data)`` (``run_info.initial_weights:
    initial.pt``; ``mtpp train`` draws them from ``train.seed``), or a ``--resume`` changed its settings
    (``run_info.resumed``; ``mtpp train`` trains with the final ones from the first epoch). A longer
    ``train.max_epochs`` alone is no change of course (without a cosine schedule, whose period it sets). ``raw``:
    CONFIG's parsed content (``mtpp.config.read_config_file``)."""
    from mtpp.config import is_result_record
    from mtpp.training.checkpoint import INITIAL

    if config_path is None or raw is None:
        return
    info = (raw["config"] if is_result_record(raw) else raw).get("run_info")
    if not isinstance(info, dict):
        return
    reasons = []
    if info.get("initial_weights") == INITIAL:
        where = Path(config_path).parent / INITIAL
        reasons.append(f"its initial weights were the model passed to fit(model, data) ({where}), not drawn from "
                       f"train.seed (to reproduce it, load {where} into build_model(...) with "
                       "model.load_state_dict(torch.load(PATH)['model']) and pass that model to fit(model, data, "
                       "config=...))")
    cosine = cfg.train.lr_schedule == "cosine"
    changes = [f"{key} {change[0]!r} -> {change[1]!r} after epoch {entry.get('epoch')}"
               for entry in info.get("resumed") or [] if isinstance(entry, dict)
               for key, change in (entry.get("changed") or {}).items()
               if isinstance(change, list) and len(change) == 2 and (key != "train.max_epochs" or cosine)]
    if changes:
        reasons.append(f"--resume changed its settings ({', '.join(changes)}; run_info.resumed), and this run trains "
                       "with the final ones from the first epoch")
    if reasons:
        print(f"warning: {config_path} is the record of a run that training it again does not reproduce: "
              + "; ".join(reasons), file=sys.stderr)


def _buildable(cfg: Any) -> None:
    """What only the trainer knows about a configuration, checked without data or a run folder: the aggregator's
    name and options (``mtpp.training.aggregators``) and the model's layer constraints (``model.hidden_size``
    divisible by ``model.num_heads``, ...), the model built on PyTorch's meta device for any number of marks."""
    import torch

    from mtpp.errors import ConfigError
    from mtpp.models import build_model
    from mtpp.training.aggregators import make_aggregator

    make_aggregator(cfg.gradients.aggregator, **cfg.gradients.options)
    try:
        with torch.device("meta"):
            build_model(cfg.model, num_marks=2)  # the layers do not depend on the number of marks
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a layer that cannot be built on meta: left to the run
        pass


def _name_the_files_mistakes(cfg: Any, variants: list[dict] | None, config_path: Path | None) -> None:
    """``ConfigError`` before anything is written when the configuration (each of ``variants``, as trained: with
    the ``--set`` overrides) cannot be built (:func:`_buildable`); when the file alone, without ``--set``, fails
    the same way, the message names the file (``gradients: {options: {alpah: 0.5}}`` in a config said only
    "gradients.options: unknown option(s) alpah")."""
    from mtpp.config import load_config, variant_configs
    from mtpp.errors import ConfigError

    configs = variant_configs(cfg, variants) if variants else {"": cfg}
    for name, full in configs.items():
        try:
            _buildable(full)
        except ConfigError as e:
            where = f"variant {name}: " if name else ""
            if config_path is not None:
                file_cfg = load_config(config_path)
                alone = variant_configs(file_cfg, file_cfg.variants) if file_cfg.variants else {"": file_cfg}
                try:
                    if name in alone:
                        _buildable(alone[name])
                except ConfigError as f:
                    if str(f) == str(e):
                        raise ConfigError(f"{config_path}: {where}{e}") from None
            raise ConfigError(f"{where}{e}") from None

