"""runner.smoke.report: the text report and the JUnit XML that CI systems read."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from runner.smoke.report import FAILED, PASSED, SKIPPED, Check, junit_xml, passed, text_report

CHECKS = [
    Check("spec", "spec", PASSED, "valid TrainingJob 'x'"),
    Check("environment", "token variable HF_TOKEN", FAILED, "spec.output.hub.tokenEnv: not set"),
    Check("hub", "hub model org/m", SKIPPED, "not checked, HF_HUB_OFFLINE is set"),
    Check("run", "train stage", PASSED, "done", 12.5),
]


def test_text_report_lists_every_check_with_failures_last_and_a_verdict():
    text = text_report("smoke run of x.yaml:", CHECKS, ["differs in 3 field(s)"])
    lines = text.splitlines()
    assert lines[0] == "smoke run of x.yaml:" and lines[1] == "  differs in 3 field(s)"
    assert [line.split()[0] for line in lines[2:6]] == ["PASSED", "PASSED", "SKIPPED", "FAILED"]
    assert "[12.5s]" in lines[3]
    assert lines[-1] == "smoke run FAILED: 2 passed, 1 failed, 1 skipped"
    assert text_report("t", CHECKS[:1]).splitlines()[-1] == "smoke run passed: 1 passed, 0 failed, 0 skipped"


def test_junit_has_one_testcase_per_check_with_failure_and_skipped_elements():
    root = ET.fromstring(junit_xml("trainingjob smoke x.yaml", CHECKS, ["spec.a: 1 -> 2 (why)"]))
    suite = root.find("testsuite")
    assert suite.attrib["name"] == "trainingjob smoke x.yaml"
    assert (suite.attrib["tests"], suite.attrib["failures"], suite.attrib["skipped"]) == ("4", "1", "1")
    cases = suite.findall("testcase")
    assert [c.attrib["name"] for c in cases] == [c.name for c in CHECKS]
    assert cases[1].attrib["classname"] == "trainingjob.smoke.environment"
    assert cases[1].find("failure").attrib["message"] == "spec.output.hub.tokenEnv: not set"
    assert cases[2].find("skipped").attrib["message"].startswith("not checked")
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    assert float(cases[3].attrib["time"]) == 12.5
    assert suite.find("system-out").text == "spec.a: 1 -> 2 (why)"


def test_junit_escapes_what_a_message_may_hold():
    check = Check("datasets", "dataset <a & b>", FAILED, 'file "x<y>.png": & broken')
    case = ET.fromstring(junit_xml("s", [check])).find("testsuite/testcase")
    assert case.attrib["name"] == "dataset <a & b>"
    assert case.find("failure").text == 'file "x<y>.png": & broken'


def test_verdict_and_statuses():
    assert passed(CHECKS[:1] + CHECKS[2:]) and not passed(CHECKS)
    with pytest.raises(ValueError, match="status must be"):
        Check("spec", "spec", "ok")


@pytest.mark.parametrize("args, expected", [
    ((12, 1, "8 (64x64: 8)"), "12 usable image(s) in 1 bucket(s) fill the real batch; sampled 8 (64x64: 8)"),
    ((12, 1, "8 (64x64: 8)", "5 skipped: 5 smaller than minimumImageSize"),
     "12 usable image(s) in 1 bucket(s) fill the real batch; sampled 8 (64x64: 8); "
     "5 skipped: 5 smaller than minimumImageSize (the real run skips them too)"),
    ((12, 1, "8 (64x64: 8)", None, "pseudo-camera-10k"),
     "stand-in sample photos, not dataset pseudo-camera-10k (a smoke run does not read it), checked with its "
     "settings: 12 usable image(s) in 1 bucket(s) fill a batch of the real size; sampled 8 (64x64: 8)"),
    ((12, 1, "8 (64x64: 8)", "5 skipped: 5 smaller than minimumImageSize", "pseudo-camera-10k"),
     "stand-in sample photos, not dataset pseudo-camera-10k (a smoke run does not read it), checked with its "
     "settings: 12 usable image(s) in 1 bucket(s) fill a batch of the real size; sampled 8 (64x64: 8); "
     "5 skipped: 5 smaller than minimumImageSize (by its settings)"),
    ((10, 1, "8 (64x64: 8)", None, None, None, "2 in a bucket too small for one batch of 4 are dropped "
      "(64x128 2)"),
     "10 usable image(s) in 1 bucket(s) fill the real batch; 2 in a bucket too small for one batch of 4 are dropped "
     "(64x128 2); sampled 8 (64x64: 8)"),
    ((12, 1, "8 (64x64: 8)", None, "pseudo-camera-10k", "32 images an optimizer step"),
     "stand-in sample photos, not dataset pseudo-camera-10k (a smoke run does not read it), checked with its "
     "settings: 12 usable image(s) in 1 bucket(s) (too few to fill a batch of the real size, 32 images an "
     "optimizer step, which says nothing about pseudo-camera-10k); sampled 8 (64x64: 8)"),
])
def test_dataset_detail_says_when_photos_stand_in(args, expected):
    from runner.smoke.session import dataset_detail

    assert dataset_detail(*args) == expected


def test_the_dataset_check_counts_what_the_real_batch_trains(tmp_path, minimal_spec):
    """The smoke's dataset check counts as validate does: a bucket that cannot fill one real
    batch is dropped by the real run, so it is named, not counted as usable."""
    import yaml
    from PIL import Image

    from runner.smoke.session import Session, _sample_datasets
    from runner.spec.load import job_from_document

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(256, 256)] * 5 + [(256, 384), (640, 256)]):
        Image.new("RGB", size, (30 * i, 90, 200)).save(photos / f"photo-{i}.png")
    doc = yaml.safe_load(minimal_spec)
    doc["spec"]["datasets"][0].update({"path": str(photos), "crop": True, "cropAspect": "preserve",
                                       "resolution": 128, "resolutionType": "pixel"})
    doc["spec"]["training"]["batchSize"] = 2
    session = Session(source="spec.yaml")
    _sample_datasets(session, job_from_document(doc).document.to_dict(), tmp_path / "smoke", 8)
    [check] = session.checks
    assert check.status == "passed", check.message
    assert check.message.startswith("5 usable image(s) in 1 bucket(s) fill the real batch; 2 in buckets too small for "
                                   "one batch of 2 are dropped (128x192 1, 320x128 1); sampled 5 (128x128: 5)"), \
        check.message  # and only the images the real run trains: not the two it drops
