"""Smoke results as records, and the two ways they are written: a short text report and JUnit XML.

A `Check` is one line of the report and one JUnit testcase. Writers only format; they decide
nothing (whether the smoke passed is `passed(checks)`).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Check:
    """What was checked (`name`), how it went, and a message a user can act on."""

    group: str  # spec, datasets, environment, hub, kubernetes, run, budget
    name: str
    status: str
    message: str = ""
    seconds: float = 0.0

    def __post_init__(self):
        if self.status not in (PASSED, FAILED, SKIPPED):
            raise ValueError(f"status must be passed, failed or skipped, got {self.status!r}")


def passed(checks: Sequence[Check]) -> bool:
    return not any(c.status == FAILED for c in checks)


def text_report(title: str, checks: Sequence[Check], notes: Sequence[str] = ()) -> str:
    """The report printed at the end of a smoke run: one line per check, failures last so they
    are what a CI log shows at the bottom."""
    lines = [title] + [f"  {note}" for note in notes]
    order = {PASSED: 0, SKIPPED: 1, FAILED: 2}
    width = max((len(c.name) for c in checks), default=0)
    for c in sorted(checks, key=lambda c: order[c.status]):
        took = f" [{c.seconds:.1f}s]" if c.seconds >= 0.05 else ""
        lines.append(f"  {c.status.upper():7} {c.name:<{width}}  {c.message}{took}".rstrip())
    counts = {s: sum(c.status == s for c in checks) for s in (PASSED, SKIPPED, FAILED)}
    verdict = "smoke run passed" if passed(checks) else "smoke run FAILED"
    lines.append(f"{verdict}: {counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped")
    return "\n".join(lines) + "\n"


def junit_xml(suite: str, checks: Sequence[Check], changes: Sequence[str] = ()) -> str:
    """JUnit XML (the subset GitHub, GitLab and Jenkins read): one testsuite, one testcase per
    check, <failure>/<skipped> carrying the message; the spec changes go to system-out."""
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", {
        "name": suite, "tests": str(len(checks)),
        "failures": str(sum(c.status == FAILED for c in checks)), "errors": "0",
        "skipped": str(sum(c.status == SKIPPED for c in checks)),
        "time": f"{sum(c.seconds for c in checks):.3f}"})
    for c in checks:
        case = ET.SubElement(node, "testcase", {"classname": f"trainingjob.smoke.{c.group}", "name": c.name,
                                                "time": f"{c.seconds:.3f}"})
        if c.status == FAILED:
            ET.SubElement(case, "failure", {"message": c.message}).text = c.message
        elif c.status == SKIPPED:
            ET.SubElement(case, "skipped", {"message": c.message})
        elif c.message:
            ET.SubElement(case, "system-out").text = c.message
    if changes:
        ET.SubElement(node, "system-out").text = "\n".join(changes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
