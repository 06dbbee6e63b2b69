"""``mtpp train CONFIG --out DIR``: train one configuration (or each of its ``variants``) into a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  mtpp train configs/quickstart.yaml --out runs/quickstart
  mtpp train configs/quickstart.yaml --out runs/q1 --set train.max_epochs=1 --set model.decoder=lnm
  mtpp train --out runs/q1 --resume                  # continue an interrupted run from its checkpoint.pt

--set section.key=value overrides the config (values are YAML scalars: 5, 1e-3, true, lnm, [1, 2]).
Sections: data, model, train, gradients, logging (see mtpp/config.py for every key).
A config with a 'variants:' list trains one run per variant into DIR/<variant>/ and prints a comparison table;
--set applies to every variant, after its own settings (a replaced variant setting is printed).
The run directory holds config.yaml (with the data's location and fingerprints), log.jsonl, train.log (the console
output), checkpoint.pt, best.pt, metrics.json, arrays_{val,test}.json. One command writes a folder at a time.
--resume uses the recorded data and refuses other data; -q is not stored, so a later --resume talks again."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (or each variant of a config) into a run directory",
        description="Train the configuration CONFIG (YAML; defaults if omitted) into the run directory --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, nargs="?", help="run configuration YAML (default: every default)")
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
    from mtpp.config import load_config, variant_name, variants_with_overrides
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
    cfg = load_config(config_path, overrides)
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
        run_variants(cfg, variants, args.out, resume=args.resume, data_dir=args.data_dir, overwrite=args.overwrite)
        return 0
    from mtpp.training.trainer import fit

    fit(cfg, args.out, resume=args.resume, data_dir=args.data_dir, overwrite=args.overwrite)  # says how to resume
    return 0
