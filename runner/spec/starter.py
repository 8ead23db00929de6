"""`trainingjob init`: write a commented starter TrainingJob, asking a few questions on a TTY.

The starter carries the quickstart's guard rails (square random crops around 1 megapixel,
guidance 4.0, mixedPrecision "no" where autocast is unreliable) and is validated before it
is written, so `init` never leaves a spec that `validate` rejects; only the dataset folder may
not exist yet, and `init` says so.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.exitcodes import EXIT_INVALID, EXIT_OK
from runner.files import atomic_create_bytes, atomic_write_bytes
from runner.spec import schema as schema_mod
from runner.spec.errors import SpecError
from runner.spec.load import job_from_document
from runner.spec.names import slug
from runner.spec.parse import parse_document
from runner.spec.semantics import is_filesystem_root
from runner.spec.validate import field_problems

Ask = Callable[[str], str]
DEFAULT_OUTPUT = "trainingjob.yaml"
PIXART_SIGMA_1024 = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
# Accelerators that train in full precision: mps autocast is unreliable for training, and on
# CPU bf16 autocast is slower than float32 on most machines.
FULL_PRECISION = {"mps", "cpu"}


@dataclass(frozen=True)
class Question:
    key: str
    prompt: str
    path: str  # the spec field the answer lands in; its schema checks the answer
    default: Callable[[dict[str, str]], str]
    when: Callable[[dict[str, str]], bool] = lambda answers: True


def _enum(path: str) -> list[str]:
    return [str(v) for v in (schema_mod.subschema(path) or {}).get("enum", [])]


QUESTIONS = (
    Question("name", "Job name (lowercase letters, digits, '-')", "metadata.name",
             lambda a: "pixart-sigma-finetune"),
    Question("pretrained", "Pretrained model (Hub repo id or local diffusers directory)", "spec.model.pretrained",
             lambda a: PIXART_SIGMA_1024),
    Question("dataset", "Dataset directory (images are found recursively)", "spec.datasets[0].path",
             lambda a: "datasets/my-images"),
    Question("caption", "Caption strategy", "spec.datasets[0].captionStrategy", lambda a: "filename"),
    Question("instancePrompt", "Caption for every image", "spec.datasets[0].instancePrompt",
             lambda a: "a photo", when=lambda a: a.get("caption") == "instanceprompt"),
    Question("accelerator", "Accelerator", "spec.hardware.accelerator", lambda a: "cuda12"),
    Question("output", "Output directory", "spec.output.dir", lambda a: f"output/{a.get('name', 'job')}"),
)


def ask_stdin(prompt: str) -> str:
    """Prompt on stderr (stdout may carry the spec with `--output -`), read a line from stdin."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def gather(ask: Ask | None) -> dict[str, str]:
    """Answers to QUESTIONS; with `ask` None every default is taken. Bad answers are re-asked."""
    answers: dict[str, str] = {}
    for q in QUESTIONS:
        if not q.when(answers):
            continue
        default = q.default(answers)
        if ask is None:
            answers[q.key] = default
            continue
        choices = _enum(q.path.replace("[0]", ""))
        prompt = q.prompt + (f" ({'/'.join(choices)})" if choices else "") + f" [{default}]: "
        while True:
            value = ask(prompt).strip() or default
            problems = field_problems(q.path, value) + _root_problem(q, value, default)
            if not problems:
                break
            for line in problems:
                print(f"  {line}", file=sys.stderr)
        answers[q.key] = value
    return answers


def _root_problem(q: Question, value: str, default: str) -> list[str]:
    """A folder answer that is the filesystem root (the whole spec check refuses it; ask again now)."""
    if q.key in ("dataset", "output") and is_filesystem_root(value):
        return [f"{q.path}: {value!r} resolves to the filesystem root; give a folder of its own, e.g. {default}"]
    return []


def dataset_name(directory: str) -> str:
    """A valid dataset name from a directory: `datasets/My Photos` -> `my-photos`."""
    return slug(Path(directory.rstrip("/\\")).name, "images", underscore=True)


def _q(value: str) -> str:
    # JSON strings are YAML double-quoted scalars: every answer lands verbatim, whatever it holds.
    return json.dumps(value, ensure_ascii=False)


def render(answers: dict[str, str]) -> str:
    precision = "no" if answers["accelerator"] in FULL_PRECISION else "bf16"
    why = ("full precision: autocast is unreliable for training on mps and slow on CPU"
           if precision == "no" else "bf16 autocast; use \"no\" on Apple mps")
    prompt_line = (f"\n      instancePrompt: {_q(answers['instancePrompt'])}" if "instancePrompt" in answers else "")
    return f"""\
# A TrainingJob written by `trainingjob init`: fine-tune PixArt Sigma on a directory of images.
#   trainingjob validate FILE             check it (exit 0 when it is good to go)
#   trainingjob explain spec.training     docs of any field (add --recursive for the tree)
#   trainingjob run FILE                  cache text embeddings and latents, then train
apiVersion: {schema_mod.api_version()}
kind: {schema_mod.KIND}
metadata:
  name: {_q(answers['name'])}
spec:
  model:
    family: pixart_sigma
    # Hub repo id or local directory of a diffusers pipeline.
    pretrained: {_q(answers['pretrained'])}
    # PixArt Sigma was trained with 300 T5 tokens per caption.
    textEncoderMaxLength: 300
  datasets:
    - name: {_q(dataset_name(answers['dataset']))}
      type: local
      # Searched recursively for .jpg, .jpeg, .png and .webp files.
      path: {_q(answers['dataset'])}
      # The quickstart's bucketing: random square crops of about one megapixel (1024x1024);
      # images under 0.25 MP are skipped, larger ones are downsampled to 1 MP first.
      crop: true
      cropAspect: square
      cropStyle: random
      resolution: 1.0
      resolutionType: area
      minimumImageSize: 0.25
      maximumImageSize: 1.0
      targetDownsampleSize: 1.0
      # filename: the file name is the caption; textfile: a sibling .txt; instanceprompt: one fixed caption.
      captionStrategy: {_q(answers['caption'])}{prompt_line}
      metadataBackend: discovery
  training:
    # The dataset needs at least batchSize x gradientAccumulationSteps x GPUs usable images.
    batchSize: 1
    gradientAccumulationSteps: 1
    learningRate: 1.0e-5
    lrScheduler: constant_with_warmup
    lrWarmupSteps: 100
    optimizer: adamw
    maxSteps: 1000
    # {why}. Quoted, since YAML reads a bare no as false.
    mixedPrecision: "{precision}"
    gradientCheckpointing: true
    checkpointEvery: 250
    checkpointsTotalLimit: 3
    # auto resumes from the newest checkpoint under output.dir when there is one.
    resume: auto
  validation:
    prompts:
      - "a photo of a cat sitting on a windowsill, soft morning light"
    # Multiples of 16 (VAE x8, then 2x2 patches); PixArt Sigma was tuned on multi-aspect buckets.
    resolutions: "1024x1024,1280x768"
    # PixArt Sigma samples best with guidance between 3.6 and 4.4.
    guidance: 4.0
    inferenceSteps: 20
    every: 250
  output:
    # model/ (a diffusers pipeline), checkpoints/, validation/ and logs/ go here.
    dir: {_q(answers['output'])}
  tracking:
    tensorboard: true
  hardware:
    # cpu, cuda12, cuda13 (Blackwell), rocm or mps (Apple silicon).
    accelerator: {_q(answers['accelerator'])}
"""


def check(text: str, source: str) -> list[str]:
    """Problems `validate` would report for the rendered text (none means it may be written)."""
    try:
        job_from_document(parse_document(text, source), source)
    except SpecError as e:
        return e.problems
    return []


def write(text: str, output: str, force: bool) -> str | None:
    """Write a generated spec (init, import-simpletuner), atomically, never over an existing
    file unless `force` (not even one that appeared meanwhile). None, or why it was not written."""
    try:
        (atomic_write_bytes if force else atomic_create_bytes)(Path(output), text.encode("utf-8"))
    except FileExistsError:
        return f"{output}: already exists; pass --force to overwrite it"
    except OSError as e:
        return f"{output}: cannot write ({e.strerror or e})"
    return None


def run_init(output: str, yes: bool, force: bool, ask: Ask | None = None,
             interactive: bool | None = None) -> int:
    """The `init` command; returns the exit code. `ask` and `interactive` exist for tests."""
    if not output:
        print("--output: give a file name, or - to print the spec", file=sys.stderr)
        return EXIT_INVALID
    to_stdout = output == "-"
    if not to_stdout and os.path.lexists(output) and not force:
        print(f"{output}: already exists; pass --force to overwrite it or --output another file", file=sys.stderr)
        return EXIT_INVALID
    if interactive is None:
        interactive = sys.stdin.isatty() and not yes
    try:
        answers = gather((ask or ask_stdin) if interactive and not yes else None)
    except EOFError:
        print("\ninit: no answer (end of input); nothing written", file=sys.stderr)
        return EXIT_INVALID
    if not Path(answers["dataset"]).is_dir():
        print(f"note: dataset directory {answers['dataset']!r} does not exist yet; put images there before "
              "`trainingjob validate` and `trainingjob run`", file=sys.stderr)
    text = render(answers)
    problems = check(text, output)
    if problems:  # an answer combination the per-field checks could not catch
        for line in problems:
            print(line, file=sys.stderr)
        print("init: the starter would not validate; nothing written", file=sys.stderr)
        return EXIT_INVALID
    if to_stdout:
        sys.stdout.write(text)
        return EXIT_OK
    problem = write(text, output, force)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {output} (TrainingJob {answers['name']!r}); next: trainingjob validate {output}, "
          f"then trainingjob run {output}", file=sys.stderr)
    return EXIT_OK
