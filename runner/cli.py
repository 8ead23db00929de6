"""`trainingjob` command line. validate/schema/explain/init/import-simpletuner never import torch.

Exit codes: 0 ok, 2 bad input (spec, arguments, data), 1 internal error.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from runner.spec import SpecError, load_spec

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID = 0, 1, 2


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set spec.training.maxSteps=10 (repeatable)")


def cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            job = load_spec(path, args.overrides)
        except SpecError as e:
            for line in e.problems:
                print(line, file=sys.stderr)
            status = EXIT_INVALID
            continue
        for w in job.warnings:
            print(w, file=sys.stderr)
        print(f"{path}: valid TrainingJob {job.name!r}")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    try:
        job = load_spec(args.file, args.overrides)
    except SpecError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    for w in job.warnings:
        print(w, file=sys.stderr)
    from runner.stages.run import run_job  # heavy imports (torch) only on this path

    return run_job(job, stage=args.stage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainingjob", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate TrainingJob files; exit 2 and list every problem if invalid")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_set(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run the cache and/or train stage of a TrainingJob")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--stage", choices=["cache", "train", "all"], default="all")
    _add_set(p)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors; keep that, as documented
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
