"""Every sub-command and every flag has help."""
from __future__ import annotations

import argparse

from xlmr_compress.cli import build_parser


def test_every_flag_is_explained(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"finetune", "evaluate", "demo", "convert-e5"} <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 8, f"{name} {action.option_strings} has no help"
        sub.format_help()
