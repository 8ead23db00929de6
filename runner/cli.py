"""`trainingjob` command line. validate/schema/explain/init/import-simpletuner never import torch.

Exit codes: 0 ok, 2 bad input (spec, arguments, data), 1 internal error.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from runner.envvars import DEBUG_ENV
from runner.exitcodes import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_STOPPED, StageStopped
from runner.spec.errors import SpecError
from runner.spec.load import STDIN, load_spec


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set spec.training.maxSteps=10 (repeatable)")


def _print_spec_error(e: SpecError) -> None:
    for line in e.warnings + e.problems:
        print(line, file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from runner.spec.problems import as_json, check_files

    if args.files.count("-") > 1:
        print(f"validate: standard input (-) is named {args.files.count('-')} times; it can be read once, so "
              "name it once", file=sys.stderr)
        return EXIT_INVALID
    results = check_files(args.files, args.overrides)
    if args.output == "json":
        import json

        print(json.dumps(as_json(results), indent=2))
    else:
        for result in results:
            for problem in result.problems:
                print(problem.text, file=sys.stderr)
            if result.valid:
                print(f"{result.file}: valid TrainingJob {result.name!r}")
                for line in result.datasets:
                    print(f"  {line}")
    return EXIT_OK if all(r.valid for r in results) else EXIT_INVALID


def cmd_run(args: argparse.Namespace) -> int:
    from runner.smoke import command as smoke

    if args.file == STDIN and (args.smoke or args.container):
        print(f"run: a spec from standard input (-) does not go with --{'smoke' if args.smoke else 'container'}, "
              "which reads the file again; save the spec to a file and name it", file=sys.stderr)
        return EXIT_INVALID
    if args.smoke:
        return smoke.cmd_smoke(args)
    if smoke.stray_options(args):
        print(f"{', '.join(smoke.stray_options(args))}: only with --smoke", file=sys.stderr)
        return EXIT_INVALID
    try:
        job = load_spec(args.file, args.overrides)
    except SpecError as e:
        _print_spec_error(e)
        return EXIT_INVALID
    for w in job.warnings:
        print(w, file=sys.stderr)
    if args.container:
        from runner.launch.container import run_in_container

        return run_in_container(job, args.file, args.overrides, args.stage)
    from runner.launch.run import run_job  # heavy imports (torch) only on this path

    return run_job(job, stage=args.stage)


def cmd_schema(args: argparse.Namespace) -> int:
    from runner.spec import schema as schema_mod

    data = schema_mod.load_schema()
    if args.format == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    else:
        import json

        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from runner.spec.explain import ExplainError, explain

    try:
        sys.stdout.write(explain(args.field, recursive=args.recursive))
    except ExplainError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from runner.spec.starter import run_init

    return run_init(args.output, yes=args.yes, force=args.force)


def cmd_import_simpletuner(args: argparse.Namespace) -> int:
    from runner.importers.simpletuner.convert import import_files

    if args.output != "-" and os.path.lexists(args.output) and not args.force:
        print(f"{args.output}: already exists; pass --force to overwrite it", file=sys.stderr)
        return EXIT_INVALID
    try:
        conversion, text, warnings = import_files(args.config, args.backends)
    except SpecError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    if conversion.unmapped:
        print("options with no TrainingJob equivalent (not converted; listed at the top of the output):",
              file=sys.stderr)
        for line in conversion.unmapped:
            print(f"  {line}", file=sys.stderr)
    for line in conversion.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in warnings:
        print(line.replace("converted spec", args.output if args.output != "-" else "<stdout>", 1), file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    from runner.spec.starter import write

    problem = write(text, args.output, force=args.force)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {args.output}; check it with: trainingjob validate {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from runner.k8s import options
    from runner.k8s.render import RenderError, render_text

    try:
        job = load_spec(args.file, args.overrides)
    except SpecError as e:
        _print_spec_error(e)
        return EXIT_INVALID
    # Named by its content: an edited spec applied mid-run is a new ConfigMap, not a changed one.
    opts, problems = options.from_args(args, managed_by="trainingjob-render", content_named_config=True)
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return EXIT_INVALID
    if args.pod_monitor and not job.spec.metrics.port:
        print(f"{args.file}: warning: --pod-monitor: spec.metrics.port is 0 (no /metrics), so no PodMonitor is "
              "rendered", file=sys.stderr)
    from runner.k8s.checks import kubernetes_warnings

    for warning in kubernetes_warnings(job.document.to_dict()):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    stages = ("cache", "train") if args.stage == "all" else (args.stage,)
    try:
        sys.stdout.write(render_text(job.document.to_dict(), opts, stages))
    except RenderError as e:
        for line in e.problems:
            print(f"{args.file}: {line}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def cmd_operator(args: argparse.Namespace) -> int:
    from runner.k8s.operator import main as operator_main  # kopf and the kubernetes client: this path only

    return operator_main(args)


def build_parser() -> argparse.ArgumentParser:
    from runner import __version__
    from runner.smoke import command as smoke

    parser = argparse.ArgumentParser(prog="trainingjob", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"trainingjob {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate TrainingJob files; exit 2 and list every problem if invalid")
    p.add_argument("files", nargs="+", metavar="FILE", help="spec files; '-' reads one from standard input")
    p.add_argument("--output", "-o", choices=["text", "json"], default="text",
                   help="json: one JSON document with every problem as {file, field, message, severity} "
                        "and each file as {file, name, valid, datasets}")
    _add_set(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run the cache and/or train stage of a TrainingJob")
    p.add_argument("file", metavar="FILE", help="the spec; '-' reads it from standard input")
    p.add_argument("--stage", choices=["cache", "train", "all"], default="all")
    p.add_argument("--container", action="store_true",
                   help="run inside the image for spec.hardware.accelerator, with podman or docker "
                        "(TRAININGJOB_IMAGE / TRAININGJOB_ENGINE override them)")
    p.add_argument("--smoke", action="store_true",
                   help="a CI smoke run: this spec shrunk for the CPU (sampled data, the tiny model, a few steps), "
                        "plus checks of what only the real run uses; see `trainingjob smoke --help`")
    smoke.add_arguments(p)
    _add_set(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("smoke", help="same as `run FILE --smoke`: the spec shrunk for the CPU, end to end, "
                                     "and a report (--junit for CI)")
    p.add_argument("file", metavar="FILE")
    smoke.add_arguments(p)
    _add_set(p)
    p.set_defaults(func=smoke.cmd_smoke)

    from runner.k8s import options

    p = sub.add_parser("render", help="print the Kubernetes objects of a TrainingJob in apply order (no operator needed)")
    p.add_argument("file", metavar="FILE", help="the spec; '-' reads it from standard input")
    p.add_argument("--stage", choices=["cache", "train", "all"], default="all",
                   help="only the objects of one stage (to apply cache, wait for it, then train)")
    options.add_flags(p, "also a PodMonitor (Prometheus Operator)")
    _add_set(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("operator", help="run the Kubernetes operator that reconciles TrainingJobs into Jobs")
    p.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                   help="watch only this namespace (repeatable; default: every namespace)")
    options.add_flags(p, "create a PodMonitor per job (Prometheus Operator)")
    p.add_argument("--metrics-port", type=int, default=8000, help="the operator's own /metrics (0 disables)")
    p.add_argument("--health-port", type=int, default=8080, help="liveness probe endpoint /healthz")
    p.set_defaults(func=cmd_operator)

    p = sub.add_parser("schema", help="print the TrainingJob JSON Schema (the source of truth for every field)")
    p.add_argument("--format", choices=["json", "yaml"], default="json")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("explain", help="document a field and its children, like kubectl explain")
    p.add_argument("field", nargs="?", default="", metavar="FIELD",
                   help="dotted field path, e.g. spec.training or spec.datasets.crop (default: the whole job)")
    p.add_argument("--recursive", action="store_true", help="list every nested field")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("init", help="write a commented starter TrainingJob (asks a few questions on a terminal)")
    p.add_argument("--output", "-o", default="trainingjob.yaml", metavar="FILE",
                   help="where to write it ('-' for stdout; default trainingjob.yaml)")
    p.add_argument("--yes", "-y", action="store_true", help="take every default without asking")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import-simpletuner",
                       help="convert a SimpleTuner config.json + multidatabackend.json into a TrainingJob")
    p.add_argument("config", metavar="CONFIG.json")
    p.add_argument("backends", metavar="MULTIDATABACKEND.json")
    p.add_argument("--output", "-o", default="-", metavar="FILE", help="where to write it (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(func=cmd_import_simpletuner)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors; keep that, as documented
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        stopped = isinstance(e, StageStopped)
        # `run` says what it leaves behind itself (runner/launch/run.py run_job); this is a stop
        # before its work began, or in one of its workers, or in any other command
        print("stopped (SIGTERM)" if stopped else "interrupted", file=sys.stderr)
        return EXIT_STOPPED if stopped else EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # anything else is our bug, not the user's input
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"This is a bug in trainingjob, not in your input. Please report it with the command you ran "
              f"(rerun with {DEBUG_ENV}=1 for the traceback).", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
