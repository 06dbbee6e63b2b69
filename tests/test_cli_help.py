"""Every command's ``--help`` explains each of its options: a user reading ``mtpp generate --help`` saw
``--sampler {auto,icdf,thinning,mode}`` and ``--seed SEED`` with no word on what they do or what ``auto`` is."""

from __future__ import annotations

import argparse


def _options_without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_command_has_help_text() -> None:
    from mtpp.cli import build_parser

    assert _options_without_help(build_parser(), "mtpp") == []


def test_generate_help_says_what_each_sampler_is() -> None:
    from mtpp.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    sampler = next(a for a in sub["generate"]._actions if a.dest == "sampler")
    for name in sampler.choices:
        assert f"{name}:" in sampler.help or f"{name} (default)" in sampler.help, name
