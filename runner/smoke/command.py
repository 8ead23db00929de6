"""Command-line options of a smoke run, shared by `trainingjob run FILE --smoke` and `trainingjob smoke FILE`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.exitcodes import EXIT_INVALID
from runner.files import not_a_directory
from runner.smoke.session import DEFAULT_BUDGET_S, DEFAULT_IMAGES

# dest -> flag, for the "only with --smoke" message
_FLAGS = {"smoke_dir": "--smoke-dir", "smoke_images": "--smoke-images", "budget": "--budget", "junit": "--junit"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds >= 0 (0 = no budget)")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The smoke options; their defaults are None so `run` can tell they were given without --smoke."""
    p.add_argument("--smoke-dir", metavar="DIR",
                   help="where the smoke writes its sample, cache and outputs (default .smoke/<metadata.name>); "
                        "never the spec's own output or cache")
    p.add_argument("--smoke-images", type=_positive_int, metavar="N",
                   help=f"images sampled per dataset, spread over its aspect buckets (default {DEFAULT_IMAGES})")
    p.add_argument("--budget", type=_seconds, metavar="SECONDS",
                   help=f"time budget; over it the smoke fails and names the slowest part "
                        f"(default {DEFAULT_BUDGET_S:g}, 0 = none)")
    p.add_argument("--junit", metavar="FILE", help="also write the report as JUnit XML, for CI test reports")


def stray_options(args: argparse.Namespace) -> list[str]:
    """Smoke options given to a plain `run`."""
    return [flag for dest, flag in _FLAGS.items() if getattr(args, dest, None) is not None]


def option_problems(args: argparse.Namespace) -> list[str]:
    """Smoke options that cannot work, found before minutes of running rather than after."""
    problems = []
    if getattr(args, "stage", "all") != "all":
        problems.append(f"--stage {args.stage}: not with --smoke, which runs every stage of the shrunk spec")
    if args.smoke_dir and (why := not_a_directory(args.smoke_dir)):
        problems.append(f"--smoke-dir: {why}; give a folder (it is created when missing)")
    if args.junit:
        junit = Path(args.junit)
        if junit.is_dir():
            problems.append(f"--junit: {junit} is a directory; give a file name, e.g. {junit / 'smoke.xml'}")
        elif why := not_a_directory(junit.parent):
            problems.append(f"--junit: {why}")
    return problems


def cmd_smoke(args: argparse.Namespace) -> int:
    from runner.smoke.session import SmokeOptions, run_smoke

    if problems := option_problems(args):
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return EXIT_INVALID

    opts = SmokeOptions(smoke_dir=args.smoke_dir,
                        images=args.smoke_images if args.smoke_images is not None else DEFAULT_IMAGES,
                        budget_s=args.budget if args.budget is not None else DEFAULT_BUDGET_S,
                        junit=args.junit)
    return run_smoke(args.file, args.overrides, opts)
