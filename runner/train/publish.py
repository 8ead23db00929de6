"""Push the final pipeline to the Hugging Face Hub. The token comes from the environment
variable the spec names; it is never logged or written anywhere.

The push comes after all the training, so its failures are sorted by whether trying again can help:
  * transient (the Hub answering 408, 429 or 5xx, a refused or dropped connection, a timeout, a
    host name that does not resolve): the whole push (create_repo, then upload_folder) is tried
    again, `retries` times with exponential backoff, then PublishRetryable, exit 1: Kubernetes
    retries the pod, and the rerun resumes from the final checkpoint, trains no further steps,
    and validates, exports and pushes again. huggingface_hub retries some requests itself
    (http_backoff: the preupload and LFS requests, the commit when hf_xet is installed), but not
    create_repo, and it has no retry of a whole upload (calling upload_folder again is how its
    upload pipeline resumes one). Hence runner.data.hub.with_retries here, the loop the
    downloads use.
  * the push as configured cannot work (the token refused, no write access, no such repo, an
    invalid repo id, HF_HUB_OFFLINE set): PublishError at once, exit 2, naming
    spec.output.hub.repoId or the token's variable (its name, never its value). An empty token
    variable and offline mode are refused by `run` before any work (hub_token, refuse_offline_push).
  * anything else (not an HTTP or network error): PublishRetryable at once, exit 1.
Either way the trained and exported model stays in the output folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from runner.files import atomic_write_bytes
from runner.models.registry import traits
from runner.spec.errors import clip
from runner.spec.plan import exported_document

# After the first attempt: waits of 2, 4, 8 and 16 s. Read at call time, so tests can shorten them.
PUSH_RETRIES = 4
PUSH_BACKOFF_S = 2.0


class PublishError(Exception):
    """The push cannot succeed as configured (token, repo id, permissions): exit 2."""


class PublishRetryable(Exception):
    """The push failed for a reason a later attempt may not meet (the Hub down or unreachable,
    still after the retries, or an unexpected error): exit 1, so the pod is retried."""


def hub_token(hub: dict[str, Any]) -> str:
    name = hub["tokenEnv"]
    token = os.environ.get(name, "")
    if not token:
        raise PublishError(f"spec.output.hub.push is true but the environment variable {name} is empty; "
                           f"export {name}=<token> (on Kubernetes: spec.kubernetes.secrets.hubToken)")
    return token


# huggingface_hub reads these once, at import, with these truth values (huggingface_hub.constants).
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


def refuse_offline_push(env: Any = None) -> None:
    """PublishError when offline mode is on, which forbids the push: `run` calls this before any
    work, since the push would otherwise fail only after all the training."""
    env = os.environ if env is None else env
    for name in OFFLINE_ENV:
        if str(env.get(name) or "").upper() in _TRUE:
            raise PublishError(f"spec.output.hub.push is true but {name} is set, which forbids the push; unset "
                               f"{name}, or set spec.output.hub.push: false")


def model_card(job_document: dict[str, Any], images: list[Path], repo_id: str) -> str:
    spec = job_document["spec"]
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        f"base_model: {spec['model']['pretrained']}",
        f"tags: [{traits(spec['model']['family']).tag}, text-to-image, diffusers, trainingjob]",
        "---",
        f"# {repo_id}",
        "",
        f"Full fine-tune of `{spec['model']['pretrained']}` made with `trainingjob`.",
        "",
        "## Validation images",
        "",
    ]
    lines += [f"![{p.stem}](validation/{p.name})" for p in images]
    shown = yaml.safe_dump(exported_document(job_document), sort_keys=False).rstrip()
    lines += ["", "## TrainingJob", "", "```yaml", shown, "```", ""]
    return "\n".join(lines)


def write_card(model_dir: Path, job_document: dict[str, Any], images: list[Path], repo_id: str) -> None:
    """The model card (README.md) and its validation images, into the exported folder. Each is
    written beside and renamed into place, never into an existing file: some of an export's
    files are hard links to the base model's."""
    atomic_write_bytes(model_dir / "README.md", model_card(job_document, images, repo_id).encode("utf-8"))
    for p in images:
        atomic_write_bytes(model_dir / "validation" / p.name, p.read_bytes())


def push_to_hub(model_dir: Path, job_document: dict[str, Any], images: list[Path], *,
                retries: int | None = None, backoff_s: float | None = None,
                sleep: Callable[[float], None] | None = None) -> str:
    """Write the model card and validation images into `model_dir`, then upload it; returns the
    commit URL. `retries`/`backoff_s` default to PUSH_RETRIES/PUSH_BACKOFF_S; `sleep` (time.sleep
    when None) is there for tests."""
    from huggingface_hub import HfApi

    from runner.data.hub import with_retries

    hub = job_document["spec"]["output"]["hub"]
    token = hub_token(hub)
    repo_id = hub["repoId"]
    title = traits(job_document["spec"]["model"]["family"]).title
    write_card(model_dir, job_document, images, repo_id)
    api = HfApi(token=token)
    retries = PUSH_RETRIES if retries is None else retries
    step = ["creating the repo"]  # what the failed attempt was doing, for the message

    def push():
        step[0] = "creating the repo"
        api.create_repo(repo_id, private=hub["private"], exist_ok=True, repo_type="model")
        step[0] = "uploading the folder"
        return api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), repo_type="model",
                                 commit_message=f"Upload fine-tuned {title} pipeline (trainingjob)")

    def log(line: str) -> None:
        print(f"warning: {_hidden(line, token)}", file=sys.stderr, flush=True)

    try:
        commit = with_retries(push, f"pushing to the Hub repo {repo_id}", retries,
                              PUSH_BACKOFF_S if backoff_s is None else backoff_s, log=log, sleep=sleep)
    except Exception as e:  # noqa: BLE001 - sorted into exit 2 / exit 1 by push_error
        raise push_error(e, job_document, model_dir, step[0], retries, api.endpoint, token) from None
    return getattr(commit, "commit_url", repo_id)


def push_error(e: BaseException, job_document: dict[str, Any], model_dir: Path, step: str, retries: int,
               endpoint: str, token: str) -> PublishError | PublishRetryable:
    """The error to raise for a push that failed with `e` while `step`: PublishError when the
    spec or the token must change, PublishRetryable otherwise. The token's value is never in it."""
    from huggingface_hub import errors as hf_errors

    from runner.data.hub import is_transient

    hub = job_document["spec"]["output"]["hub"]
    repo_id, env = hub["repoId"], hub["tokenEnv"]
    what = f"pushing {model_dir} to the Hub repo {repo_id} at {endpoint} failed while {step}"
    status = getattr(getattr(e, "response", None), "status_code", None)
    reason = f"HTTP {status}" if isinstance(e, hf_errors.HfHubHTTPError) and status else type(e).__name__
    reason = _hidden(f"{reason}: {clip(' '.join(str(e).split()), 300)}" if str(e).strip() else reason, token)
    kept = f"The training and the export are complete and kept in {model_dir}"
    rerun = _rerun_hint(job_document)
    secret = "(on Kubernetes: the Secret in spec.kubernetes.secrets.hubToken)"

    if isinstance(e, hf_errors.OfflineModeIsEnabled):  # a ConnectionError, but no retry can help
        fix = "HF_HUB_OFFLINE is set, which forbids the push: unset it, or set spec.output.hub.push: false"
    elif isinstance(e, hf_errors.HFValidationError):
        fix = f"spec.output.hub.repoId: {repo_id!r} is not a valid Hub repo id ({reason}); use owner/name"
    elif status == 401:
        fix = (f"the Hub refused the token in the environment variable {env} ({reason}); set {env} to a valid "
               f"token with write access {secret}")
    elif status == 403:
        fix = (f"the token in the environment variable {env} may not write to {repo_id} ({reason}); use a token "
               f"with write access to {repo_id.split('/')[0]} {secret}, or change spec.output.hub.repoId")
    elif isinstance(e, hf_errors.RepositoryNotFoundError):
        fix = (f"the repo {repo_id} was not found, or the token in {env} cannot see it ({reason}); check "
               f"spec.output.hub.repoId and that {env} holds a token with write access {secret}")
    elif isinstance(e, hf_errors.HfHubHTTPError) and status and 400 <= status < 500 and not is_transient(e):
        fix = (f"the Hub refused the push ({reason}); check spec.output.hub.repoId and the token in {env} "
               f"{secret}")
    else:
        tried = f" (tried {retries + 1} times)" if is_transient(e) else ""
        return PublishRetryable(f"{what}{tried}: {reason}. {kept}; {rerun}. Check this machine's network access "
                                f"to {endpoint} (HF_ENDPOINT picks the Hub or a mirror; HTTPS_PROXY/NO_PROXY a proxy)")
    return PublishError(f"{what}: {fix}. {kept}; once that is fixed, {rerun}")


def _rerun_hint(job_document: dict[str, Any]) -> str:
    resume = job_document["spec"].get("training", {}).get("resume", "auto")
    if resume == "auto":
        return ("rerunning the same command trains no further steps: it resumes from the final checkpoint and goes "
                "on to the final validation, the export and the push")
    return (f"to push without training again, rerun with --set spec.training.resume=auto (with resume: {resume} "
            "the rerun would not start from the final checkpoint)")


def _hidden(text: str, token: str) -> str:
    """`text` with the token's value blanked out, in case a server or library ever echoes it."""
    return text.replace(token, "<hidden>") if token else text
