"""Captions for images: from the file name, from a sibling .txt file, or one fixed prompt."""
from __future__ import annotations

import re
from pathlib import Path

from runner.data import DatasetError
from runner.data.discovery import ImageInfo

CAPTION_STRATEGIES = ("filename", "textfile", "instanceprompt")

# "cat (2)" -> "cat": the copy counter file managers add.
_PAREN_COUNTER = re.compile(r"\s*\(\d+\)$")
# "cat_2", "cat-12" -> "cat": a counter after a `_` or `-` separator (only after a separator:
# "route66" and "route 66" keep their digits).
_SEPARATOR_COUNTER = re.compile(r"(?<=\S)[-_]+\d+$")
_WHITESPACE = re.compile(r"\s+")


class CaptionError(DatasetError):
    """An image whose caption cannot be found. `reason` is the message without the image name."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _fail(name: str, reason: str) -> CaptionError:
    return CaptionError(f"{name}: {reason}", reason=reason)


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def caption_from_filename(stem: str) -> str:
    """File stem -> caption: trailing ` (N)` or `_N`/`-N` counter dropped, `_` as space,
    whitespace collapsed. A stem that would become empty (e.g. `_2`) keeps its counter."""
    text = _PAREN_COUNTER.sub("", stem)
    text = _SEPARATOR_COUNTER.sub("", text)
    text = _WHITESPACE.sub(" ", text.replace("_", " ")).strip()
    if not text:
        text = _WHITESPACE.sub(" ", stem.replace("_", " ")).strip()
    return text


def caption_path(image_path: Path) -> Path:
    """The sibling text file holding an image's caption: same stem, `.txt`."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + ".txt")


_UTF16_BOMS = (("\ufeff".encode("utf-16-le"), "utf-16-le"), ("\ufeff".encode("utf-16-be"), "utf-16-be"))
_RESAVE = "re-save it as UTF-8"


def decode_caption_bytes(data: bytes) -> str:
    """A caption file's bytes -> text: UTF-8 (with or without a BOM) or UTF-16 with a BOM.

    Raises ValueError with the reason (without the file name) for anything else, and for text
    holding NUL characters (a BOM-less UTF-16 file reads as 'a\\x00 \\x00c\\x00...' in UTF-8)."""
    for bom, encoding in _UTF16_BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(encoding)
            except UnicodeDecodeError:
                raise ValueError(f"is not valid UTF-16 text after its byte-order mark; {_RESAVE}") from None
            break
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(f"is not UTF-8 text; {_RESAVE}") from None
    if "\x00" in text:
        raise ValueError("contains NUL bytes (UTF-16 saved without a byte-order mark?); " + _RESAVE)
    return text


def read_caption_file(image_path: Path, root: Path | None = None) -> str:
    """First non-empty line of the image's sibling .txt file, stripped.

    Raises CaptionError naming the image and the expected .txt path when the file is
    missing, unreadable, not text (see decode_caption_bytes) or blank."""
    txt = caption_path(image_path)
    name = _display(image_path, root)
    want = _display(txt, root)
    try:
        if txt.exists() and not txt.is_file() and not txt.is_dir():
            # A FIFO would block the read forever, a device might never end.
            raise _fail(name, f"{want} is not a regular file, expected a caption text file")
        data = txt.read_bytes()
    except FileNotFoundError:
        raise _fail(name, f"no caption file; captionStrategy textfile expects {want}") from None
    except IsADirectoryError:
        raise _fail(name, f"{want} is a directory, expected a caption text file") from None
    except OSError as e:
        raise _fail(name, f"cannot read caption file {want} ({e.strerror or e})") from None
    try:
        text = decode_caption_bytes(data)
    except ValueError as e:
        raise _fail(name, f"caption file {want} {e}") from None
    for line in text.splitlines():
        line = _WHITESPACE.sub(" ", line).strip()
        if line:
            return line
    raise _fail(name, f"caption file {want} is empty; write the caption into it")


def caption_for(info_or_path: ImageInfo | Path | str, root: Path | None, strategy: str,
                instance_prompt: str | None = None) -> str:
    """The caption of one image.

    `filename`: the file stem, `_` as space, a trailing ` (N)` / `_N` / `-N` counter dropped.
    `textfile`: the first non-empty line of `<stem>.txt` next to the image (CaptionError if
    missing or blank). `instanceprompt`: `instance_prompt` for every image.
    `root` is only used to print paths relative to the dataset root in errors."""
    path = info_or_path.path if isinstance(info_or_path, ImageInfo) else Path(info_or_path)
    if root is not None and not path.is_absolute() and not isinstance(info_or_path, ImageInfo):
        path = Path(root) / path
    if strategy == "filename":
        return caption_from_filename(path.stem)
    if strategy == "textfile":
        return read_caption_file(path, root)
    if strategy == "instanceprompt":
        prompt = (instance_prompt or "").strip()
        if not prompt:
            raise CaptionError("captionStrategy instanceprompt needs a non-empty instancePrompt")
        return prompt
    raise ValueError(f"unknown captionStrategy {strategy!r}; expected one of {', '.join(CAPTION_STRATEGIES)}")
