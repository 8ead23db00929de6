"""A user's own spec as CI runs it: `trainingjob run examples/pixart-sigma-1024.yaml --smoke`.

The real 1024 px config, pointing at the real Hub model, offline, on the CPU, with its dataset
swapped for a local folder of photos (the scikit-image samples): it must pass within the
default budget, and its report must name what was checked and what the network kept it from
checking.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image

from runner.smoke.session import DEFAULT_BUDGET_S

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "examples" / "pixart-sigma-1024.yaml"


def test_the_real_1024_example_smoke_runs_offline_on_the_cpu(tmp_path, sample_photos):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    junit = tmp_path / "junit.xml"
    # From a folder of its own: the spec's relative output and cache dirs would land here.
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(SPEC), "--smoke", "--junit", str(junit),
                           "--set", "spec.datasets.0.type=local", "--set", f"spec.datasets.0.path={sample_photos}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-4000:]
    report = proc.stdout[proc.stdout.index(f"smoke run of {SPEC}:"):]
    print(report)  # the measured times, for the record

    cases = {c.attrib["name"]: c for c in ET.parse(junit).getroot().iter("testcase")}
    status = {name: "failed" if c.find("failure") is not None else "skipped" if c.find("skipped") is not None
              else "passed" for name, c in cases.items()}
    budget = cases["time budget"]
    if status["time budget"] == "failed":  # a loaded machine: say so, with the part the report blamed
        pytest.fail(f"over the {DEFAULT_BUDGET_S:g}s budget: {budget.find('failure').attrib['message']}")
    assert proc.returncode == 0, out[-4000:]

    # What was checked, and what was skipped because of the network.
    assert status == {"spec": "passed", "dataset pseudo-camera-10k": "passed", "tiny model": "passed",
                      "cache stage": "passed", "train stage": "passed", "export": "passed", "time budget": "passed",
                      "hub model PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "skipped"}
    assert f"of {DEFAULT_BUDGET_S:g}s" in budget.find("system-out").text
    hub = cases["hub model PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"].find("skipped").attrib["message"]
    assert "HF_HUB_OFFLINE is set" in hub and "spec.model.pretrained" in hub
    assert "SKIPPED hub model PixArt-alpha/PixArt-Sigma-XL-2-1024-MS  not checked, HF_HUB_OFFLINE is set" in report
    assert report.rstrip().endswith("smoke run passed: 7 passed, 0 failed, 1 skipped")

    # The user's crops, buckets and captions on a sample of their images, at 1/4 scale.
    work = tmp_path / ".smoke" / "pixart-sigma-1024"
    smoke_spec = yaml.safe_load((work / "smoke-spec.yaml").read_text())["spec"]
    ds = smoke_spec["datasets"][0]
    assert (ds["crop"], ds["cropAspect"], ds["cropStyle"], ds["captionStrategy"]) == (True, "square", "random",
                                                                                       "filename")
    assert ds["resolution"] == 1 / 16 and ds["minimumImageSize"] == 0.25
    sampled = sorted(p.name for p in (work / "data" / "pseudo-camera-10k").iterdir())
    assert len(sampled) == 8 and set(sampled) <= {p.name for p in sample_photos.iterdir()}
    assert smoke_spec["validation"]["prompts"] == yaml.safe_load(SPEC.read_text())["spec"]["validation"]["prompts"]
    images = sorted((work / "output" / "validation" / "step-2").glob("*.png"))
    assert sorted(Image.open(p).size for p in images) == [(256, 256), (256, 256), (320, 192), (320, 192)]
    assert (work / "output" / "model" / "model_index.json").is_file()

    # Nothing of the real run was touched.
    assert not (tmp_path / "output").exists() and not (tmp_path / "cache").exists()
