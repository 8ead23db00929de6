"""What the real run needs but a CPU smoke cannot exercise, as small functions returning `Check`s.

- token variables the spec names are set (checked for being set, never read into a message),
  and the packages of the trackers it turns on are installed;
- Hub model and dataset repos exist, skipped with a notice when the Hub cannot be reached;
- the time budget.

Nothing here imports torch; huggingface_hub is imported only when the Hub is asked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runner.smoke.report import FAILED, PASSED, SKIPPED, Check

HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE


# ----------------------------------------------------------------------------- tokens

def token_checks(spec: Mapping[str, Any], env: Mapping[str, str]) -> list[Check]:
    """One check per token variable the run would read: the Hub token when it pushes, the W&B key
    when W&B is on. A variable filled from a Kubernetes Secret in the pod is not expected here."""
    hub = spec["output"]["hub"]
    wandb = spec["tracking"].get("wandb") or {}
    secrets = (spec.get("kubernetes") or {}).get("secrets") or {}
    wanted = []
    if hub.get("push"):
        wanted.append(("spec.output.hub.tokenEnv", hub["tokenEnv"], "spec.output.hub.push is true",
                       secrets.get("hubToken"), "spec.kubernetes.secrets.hubToken"))
    if wandb.get("enabled"):
        wanted.append(("spec.tracking.wandb.apiKeyEnv", wandb["apiKeyEnv"], "spec.tracking.wandb.enabled is true",
                       secrets.get("wandbApiKey"), "spec.kubernetes.secrets.wandbApiKey"))
    checks = []
    for where, name, because, secret, secret_field in wanted:
        label = f"token variable {name}"
        if env.get(name):
            checks.append(Check("environment", label, PASSED, f"set ({where}; the value is not shown)"))
        elif secret:
            checks.append(Check("environment", label, SKIPPED,
                                f"not set here; on Kubernetes it comes from Secret {secret['name']!r} "
                                f"key {secret['key']!r} ({secret_field})"))
        else:
            checks.append(Check("environment", label, FAILED,
                                f"{where}: {because} but the environment variable {name} is not set or empty; "
                                f"set it (a CI secret, or export {name}=...), or on Kubernetes set {secret_field}"))
    return checks


def package_checks(spec: Mapping[str, Any]) -> list[Check]:
    """The packages of the trackers the spec turns on (the smoke turns them off to run offline)."""
    from runner.launch.run import missing_tracker_packages

    if not (spec["tracking"].get("wandb") or {}).get("enabled"):
        return []
    missing = missing_tracker_packages(spec)
    return [Check("environment", "package wandb", FAILED, missing[0]) if missing else
            Check("environment", "package wandb", PASSED, "installed (spec.tracking.wandb.enabled is true)")]


# ----------------------------------------------------------------------------- hub

@dataclass(frozen=True)
class HubRepo:
    field: str
    repo: str
    kind: str  # model or dataset
    revision: str | None


def hub_repos(spec: Mapping[str, Any]) -> list[HubRepo]:
    """The Hub repos the real run downloads: the model, Hub datasets, the CLIP model."""
    repos = []
    model = spec["model"]
    if _on_hub(model["pretrained"]):
        repos.append(HubRepo("spec.model.pretrained", model["pretrained"], "model", model.get("revision")))
    for i, ds in enumerate(spec["datasets"]):
        if not ds["disabled"] and ds["type"] == "huggingface" and ds.get("repo"):
            repos.append(HubRepo(f"spec.datasets[{i}].repo", ds["repo"], "dataset", ds.get("revision")))
    evaluation = spec.get("evaluation") or {}
    if evaluation.get("clipScore") and _on_hub(evaluation["clipModel"]):
        repos.append(HubRepo("spec.evaluation.clipModel", evaluation["clipModel"], "model", None))
    return repos


def _on_hub(ref: str) -> bool:
    """A Hub id, not a builtin, a local folder or a path."""
    return not (ref.startswith(("builtin:", ".", "/", "~")) or os.path.isdir(os.path.expanduser(ref)))


def offline_reason(env: Mapping[str, str]) -> str | None:
    if env.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    return None


def hub_checks(repos: Sequence[HubRepo], env: Mapping[str, str], timeout: float = HUB_TIMEOUT_S) -> list[Check]:
    """One check per repo: passed (exists at that revision), failed (not found, no such revision,
    gated) or skipped because of the network (offline, unreachable, a Hub-side error). After the
    first unreachable answer the rest are skipped rather than each waiting for its timeout."""
    if not repos:
        return []
    offline = offline_reason(env)
    if offline:
        return [_skip(r, f"{offline}") for r in repos]
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hf

    api = HfApi()
    unreachable: str | None = None
    checks = []
    for r in repos:
        if unreachable:
            checks.append(_skip(r, unreachable))
            continue
        at = f"{r.repo}@{r.revision}" if r.revision else r.repo
        try:
            api.repo_info(r.repo, repo_type=r.kind, revision=r.revision, timeout=timeout)
        except hf.GatedRepoError:  # a subclass of RepositoryNotFoundError: test it first
            checks.append(_fail(r, f"{at} is gated: accept its terms on the Hub and give the run a token "
                                   "(HF_TOKEN) of an account that has access"))
        except hf.RepositoryNotFoundError:
            checks.append(_fail(r, f"{at}: no {r.kind} repo of that id on {constants.ENDPOINT} (or it is private "
                                   f"and no token with access is set); check the id"))
        except hf.RevisionNotFoundError:
            checks.append(_fail(r, f"{at}: the {r.kind} repo exists but has no revision {r.revision!r}; "
                                   "use a branch, tag or commit of it"))
        except hf.HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                checks.append(_fail(r, f"{at}: the Hub refused access (HTTP {status}); check HF_TOKEN"))
            else:
                checks.append(_skip(r, f"the Hub answered HTTP {status or '?'}"))
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeout, offline mode: all "unreachable"
            unreachable = f"the Hub at {constants.ENDPOINT} could not be reached ({type(e).__name__})"
            checks.append(_skip(r, unreachable))
        else:
            checks.append(Check("hub", _label(r), PASSED, f"{at} exists and is reachable"))
    return checks


def _label(r: HubRepo) -> str:
    return f"hub {r.kind} {r.repo}"


def _skip(r: HubRepo, why: str) -> Check:
    return Check("hub", _label(r), SKIPPED, f"not checked, {why}: the real run downloads it from the Hub ({r.field})")


def _fail(r: HubRepo, message: str) -> Check:
    return Check("hub", _label(r), FAILED, f"{r.field}: {message}")


# ----------------------------------------------------------------------------- budget

# What makes a part faster, by the part names runner.smoke.session times.
_SLOW_HINTS = {
    "checks": "asking the Hub; a slow or unreachable Hub costs up to its timeout",
    "datasets": "reading the headers of every image of the real datasets (all are checked, then sampled)",
    "tiny model": "the first build of the builtin model and the torch import; the build is reused from --smoke-dir next time",
    "cache stage": "encoding the sampled images and captions; try fewer images with --images N",
    "train stage": "training steps and validation images; fewer validation prompts or resolutions in the spec help",
    "export": "loading the exported pipeline back",
}


def budget_check(timings: Sequence[tuple[str, float]], budget_s: float) -> Check:
    """Passed when the timed parts together took at most `budget_s`; otherwise failed, naming the
    slowest part and what makes it faster."""
    total = sum(seconds for _, seconds in timings)
    if budget_s <= 0:
        return Check("budget", "time budget", SKIPPED, f"no budget set; took {total:.1f}s")
    if total <= budget_s:
        return Check("budget", "time budget", PASSED, f"took {total:.1f}s of {budget_s:g}s")
    name, seconds = max(timings, key=lambda t: t[1])
    hint = _SLOW_HINTS.get(name, "")
    return Check("budget", "time budget", FAILED,
                 f"took {total:.1f}s, over the {budget_s:g}s budget; slowest part: {name} "
                 f"({seconds:.1f}s, {100 * seconds / total:.0f}%)" + (f": {hint}" if hint else ""))
