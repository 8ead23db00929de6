"""What counts as a secret, and how a value is shown when it might be one. Torch-free.

The one place that decides whether an option name or a value may be printed: the SimpleTuner
importer, spec error messages and the spec's secret-reference checks all ask here. Two tests,
both deliberately generous (hiding a harmless value costs a little context in a message;
printing a token costs a rotated credential):

- by name: an option whose name has a word like token, key, secret, password, credential,
  webhook or auth in it (`hub_token`, `aws_secret_access_key`, `apiKeyEnv`, `webhook_config`),
  but for the fields that name a Kubernetes Secret (`imagePullSecrets[0].name`);
- by value: a value shaped like a credential (Hub, W&B, AWS, GitHub, OpenAI-style keys, a URL
  with a password or a webhook URL, a long random-looking string).
"""
from __future__ import annotations

import json
import re
from typing import Any

from runner.spec.errors import clip

HIDDEN = "<hidden: may be a secret>"

SECRET_WORDS = frozenset({
    "token", "tokens", "key", "keys", "apikey", "secret", "secrets", "password", "passwords", "passwd",
    "passphrase", "credential", "credentials", "webhook", "webhooks", "auth", "authorization", "bearer",
    "cookie", "cookies",
})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")

_SECRET_SHAPES = tuple(re.compile(p) for p in (
    r"hf_[A-Za-z0-9]{20,}",                       # Hugging Face token
    r"(?<![0-9A-Fa-f])[0-9a-fA-F]{40}(?![0-9A-Fa-f])",  # W&B API key (also a commit sha: hidden anyway)
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",                 # AWS access key id
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}",         # OpenAI/Stripe-style keys
    r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",            # Slack
    r"://[^/\s:@]+:[^/\s@]+@",                    # a URL with user:password@
    r"/api/webhooks/|hooks\.slack\.com/",         # Discord and Slack webhook URLs carry their secret
))
# A long unbroken run of letters and digits, mixed: random-looking, so likely a key.
_RANDOM_RUN = re.compile(r"[A-Za-z0-9_+=-]{32,}")
# Fields in the Kubernetes API's own shapes that name a Secret or a key in it. A Secret's name says
# where a secret is, not what it is: such a field is judged by its value's shape alone, not by the
# words of its path (`imagePullSecrets`, `secretKeyRef`). spec.kubernetes.secrets' own name and
# key stay hidden by name: they sit under `hubToken`, where a pasted token is the likely mistake
# (reference_hint).
_SECRET_REFERENCE = re.compile(r"(?:^|\.)(?:imagePullSecrets\[\d+\]\.name|secretRef\.name|secretKeyRef\.(?:name|key))$")


def words(name: str) -> list[str]:
    """`--aws_secret_access_key` -> [aws, secret, access, key]; `apiKeyEnv` -> [api, key, env]."""
    return [w.lower() for w in _SEPARATORS.split(_CAMEL.sub("_", str(name))) if w]


def looks_secret(name: Any) -> bool:
    """True when an option name (or a dotted field path) suggests its value is a secret."""
    return any(w in SECRET_WORDS for w in words(str(name)))


def looks_like_secret_value(value: Any) -> bool:
    """True when a value (or any string inside a list/dict) is shaped like a credential."""
    if isinstance(value, dict):
        return any(looks_like_secret_value(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(looks_like_secret_value(v) for v in value)
    if not isinstance(value, str):
        return False
    if any(shape.search(value) for shape in _SECRET_SHAPES):
        return True
    for run in _RANDOM_RUN.findall(value):
        digits, letters = sum(c.isdigit() for c in run), sum(c.isalpha() for c in run)
        if digits >= 6 and letters >= 6:
            return True
    return False


def is_hidden(name: Any, value: Any) -> bool:
    """Whether a value of option or field `name` may be a secret: by the name, or by the value's
    shape; a reference to a Secret (`imagePullSecrets[0].name`) by the value's shape alone."""
    by_name = looks_secret(name) and not _SECRET_REFERENCE.search(str(name))
    return by_name or looks_like_secret_value(value)


def show(name: Any, value: Any, limit: int = 80) -> str:
    """A value for a message about option `name`: JSON, clipped, or HIDDEN when it may be a secret."""
    if is_hidden(name, value):
        return HIDDEN
    return clip(json.dumps(value, default=str, ensure_ascii=False), limit)


def scrub(text: str) -> str:
    """`text` with every credential-shaped part replaced by HIDDEN: the last net for a message
    put together from values (a note that quotes an option, a suggested fix)."""
    for shape in _SECRET_SHAPES:
        text = shape.sub(HIDDEN, text)

    def random_run(match: re.Match) -> str:
        run = match.group(0)
        digits, letters = sum(c.isdigit() for c in run), sum(c.isalpha() for c in run)
        return HIDDEN if digits >= 6 and letters >= 6 else run

    return _RANDOM_RUN.sub(random_run, text)


def reference_hint(path: str) -> str | None:
    """Why a field that names where a secret lives must not hold the secret itself, or None when
    `path` is no such field. Env-var fields end in `Env`; Kubernetes Secret references are the
    `name`/`key` pairs under spec.kubernetes.secrets."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf.endswith("Env"):
        return ("this must be the name of an environment variable, not the token itself: upper-case letters, "
                "digits and '_', e.g. HF_TOKEN; export the token under that name where the job runs")
    if ".kubernetes.secrets." in f".{path}" and leaf == "name":
        return ("this must be the name of a Kubernetes Secret (lowercase letters, digits, '-' and '.'), "
                "not the token itself; create it with kubectl create secret generic NAME --from-literal=KEY=...")
    if ".kubernetes.secrets." in f".{path}" and leaf == "key":
        return ("this must be the key inside a Kubernetes Secret (letters, digits, '-', '_' and '.'), "
                "not the token itself")
    return None
