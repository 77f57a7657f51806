"""`python -m analysis <sweep dir> [...]`: collect runs, write tables, plots and report, print the main table."""

from __future__ import annotations

import argparse
import sys

from analysis.collect import METHOD_NAMES
from analysis.summary import summarize


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {flag} takes KEY=VALUE, got {item!r} (e.g. {flag} sage=SAGE)")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run summarize, print its text; exit 2 on a bad input."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("sweep_dirs", nargs="+", help="folders searched (recursively) for run records")
    parser.add_argument("--out", help="output folder (default: <first sweep dir>/analysis)")
    parser.add_argument("--names", nargs="*", default=[], metavar="METHOD=DISPLAY",
                        help="display names (give sweep dirs first); new methods follow the "
                        "defaults in the order given. Defaults: "
                        + ", ".join(f"{k}={v}" for k, v in METHOD_NAMES.items()))
    parser.add_argument("--where", nargs="*", default=[], metavar="KEY=VALUE",
                        help="keep only runs whose config has KEY=VALUE (e.g. experiment=paper_cpu)")
    parser.add_argument("--ignore-key", nargs="*", default=[], metavar="PATTERN",
                        help="config keys (fnmatch patterns) that must not split the tables into groups")
    parser.add_argument("--copy-records", action="store_true",
                        help="also copy each used run's result.json, config.json, metrics.jsonl and "
                        "evaluation episodes (gzipped) to <out>/runs/<run name>/")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.sweep_dirs, args.out, names=_pairs(args.names, "--names"),
                        ignore_keys=args.ignore_key, where=_pairs(args.where, "--where"),
                        records=args.copy_records))
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
