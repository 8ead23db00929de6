"""The cluster-level choices of whoever applies a TrainingJob's objects: the image registry, name
and version the pods run, and PodMonitors with their labels. `trainingjob render` and
`trainingjob operator` take the same flags (add_flags) and check them the same way (from_args),
so an image pushed with `make push REGISTRY=... NAME=...` is reachable from both.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from runner import __version__
from runner.k8s.labels import own_label
from runner.launch import images
from runner.spec.podrules import label_value_problem, qualified_name_problem

MANAGER = "trainingjob-operator"


@dataclass(frozen=True)
class Options:
    """Cluster-level choices of whoever applies the objects (operator flags, render flags)."""

    registry: str = images.DEFAULT_REGISTRY
    image_name: str = images.DEFAULT_NAME
    version: str = __version__
    pod_monitor: bool = False
    pod_monitor_labels: tuple[tuple[str, str], ...] = ()  # on the PodMonitors, for Prometheus' podMonitorSelector
    managed_by: str = MANAGER
    # The spec's ConfigMap named by its content (`NAME-spec-<hash>`), for `render`: an edited spec
    # applied mid-run is a new ConfigMap, and the running Job's retried pods keep reading the old
    # one. The operator never rewrites its ConfigMap, so it keeps `NAME-spec`.
    content_named_config: bool = False


def add_flags(parser: argparse.ArgumentParser, monitor_help: str) -> None:
    """The image and PodMonitor flags of `render` and `operator`."""
    parser.add_argument("--registry", default=Options.registry, help="image registry (default %(default)s)")
    parser.add_argument("--name", default=Options.image_name,
                        help="image name: the pods run <registry>/<name>:<version>-<hardware>, what `make push "
                             "REGISTRY=... NAME=...` pushes (default %(default)s)")
    parser.add_argument("--version", default=Options.version, help="image version tag (default %(default)s)")
    parser.add_argument("--pod-monitor", action="store_true", help=monitor_help)
    parser.add_argument("--pod-monitor-label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label of the PodMonitors (repeatable), for the Prometheus that selects them: a default "
                             "kube-prometheus-stack install takes those labelled release=<its Helm release name>, "
                             "e.g. release=kube-prometheus-stack")


def monitor_labels(pairs: list[str]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """(labels, problems) of the --pod-monitor-label values."""
    labels, problems = {}, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        why = "it is not KEY=VALUE" if not sep else qualified_name_problem(key)
        why = why or label_value_problem(value)
        if why is None and own_label(key):
            why = "the runner sets that label itself (the operator and the PodMonitor find the job's objects by it)"
        if why:
            problems.append(f"--pod-monitor-label: {pair!r}: {why}")
        else:
            labels[key] = value
    return tuple(labels.items()), problems


def from_args(args: argparse.Namespace, **fixed: Any) -> tuple[Options, list[str]]:
    """(Options, problems) from the flags of add_flags; `fixed` sets the rest (managed_by, ...)."""
    problems = images.reference_problems(args.registry, args.version)
    # An image name is more path components of the same reference (<registry>/<name>).
    if not problems and (not args.name or images.reference_problems(f"{args.registry.rstrip('/')}/{args.name}",
                                                                     args.version)):
        problems.append(f"--name: {args.name!r} is not an image name (lowercase letters, digits and '.', '_' or '-' "
                        f"between them, '/' between path parts), e.g. {images.DEFAULT_NAME}")
    labels, label_problems = monitor_labels(args.pod_monitor_label)
    problems += label_problems
    if labels and not args.pod_monitor:
        problems.append("--pod-monitor-label: labels PodMonitors, so it needs --pod-monitor")
    return Options(registry=args.registry, image_name=args.name, version=args.version, pod_monitor=args.pod_monitor,
                   pod_monitor_labels=labels, **fixed), problems
