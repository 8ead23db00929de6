"""Push the final pipeline to the Hugging Face Hub. The token comes from the environment
variable the spec names; it is never logged or written anywhere."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from runner.files import atomic_write_bytes
from runner.models.registry import traits


class PublishError(Exception):
    pass


def hub_token(hub: dict[str, Any]) -> str:
    name = hub["tokenEnv"]
    token = os.environ.get(name, "")
    if not token:
        raise PublishError(f"spec.output.hub.push is true but the environment variable {name} is empty; "
                           f"export {name}=<token> (on Kubernetes: spec.kubernetes.secrets.hubToken)")
    return token


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
    lines += ["", "## TrainingJob", "", "```yaml", yaml.safe_dump(job_document, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write_card(model_dir: Path, job_document: dict[str, Any], images: list[Path], repo_id: str) -> None:
    """The model card (README.md) and its validation images, into the exported folder. Each is
    written beside and renamed into place, never into an existing file: some of an export's
    files are hard links to the base model's."""
    atomic_write_bytes(model_dir / "README.md", model_card(job_document, images, repo_id).encode("utf-8"))
    for p in images:
        atomic_write_bytes(model_dir / "validation" / p.name, p.read_bytes())


def push_to_hub(model_dir: Path, job_document: dict[str, Any], images: list[Path]) -> str:
    from huggingface_hub import HfApi

    hub = job_document["spec"]["output"]["hub"]
    token = hub_token(hub)
    repo_id = hub["repoId"]
    title = traits(job_document["spec"]["model"]["family"]).title
    write_card(model_dir, job_document, images, repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=hub["private"], exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), repo_type="model",
                                   commit_message=f"Upload fine-tuned {title} pipeline (trainingjob)")
    except Exception as e:  # noqa: BLE001 - network, auth, quota: all reported the same way
        raise PublishError(f"pushing {model_dir} to the Hub repo {repo_id} failed: {type(e).__name__}: {e}") from None
    return getattr(commit, "commit_url", repo_id)
