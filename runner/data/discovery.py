"""Find images under a dataset root and read their sizes from the file headers.

`scan` is what the rest of the runner uses: it returns the usable images (with their
EXIF-oriented sizes) and, for everything it had to skip, a (relative path, reason) pair
that can be shown to the user. `validate`, the cache stage's plan and `--smoke` all probe
through here, so they agree on which images are usable.

Probing reads the header and the file's last few KiB, never the pixels: decoding every
image would make `validate` of a 100k-image folder take as long as the cache stage. The
end of the file catches the common corruption, a file cut short (an interrupted copy or
download): a JPEG must end with its end-of-image marker (FF D9), a PNG with its IEND chunk,
and a WebP must be as long as its RIFF header says (see `cut_short`). Only a file that fails
this is decoded in full, and skipped when that fails too; one that decodes (a JPEG with a
video or maker data appended after its marker, as phones write) is used. A file damaged in
the middle with an intact end still probes fine and is skipped when the cache stage decodes it.

A file whose header is cut short, or that is not an image at all, is skipped here, and so is
anything that could hang or exhaust the process later: a FIFO or device named like an image,
a symlink loop, an unreadable file, a name that is not UTF-8, an image over MAX_IMAGE_PIXELS.
Linked folders are followed, each real folder once, so a link loop is not walked.
"""
from __future__ import annotations

import json
import os
import re
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner.data import DatasetError
from runner.files import file_digest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# Image formats people drop into datasets that we do not read: reported as skipped, not ignored.
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl")

# The decompression-bomb guard: an image over this many pixels (width x height) is skipped.
# It is Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS, about 179 megapixels, e.g.
# 13,000 x 13,000), checked here explicitly because another library may have lifted
# Pillow's global one. Decoding such a file takes over 500 MB per image; downscale it first.
MAX_IMAGE_PIXELS = 2 * 89_478_485

EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transpose / rotate 270 / transverse / rotate 90


@dataclass(frozen=True)
class ImageInfo:
    """One usable image. `width`/`height` are after EXIF orientation (what the model sees)."""

    path: Path
    rel: str  # posix path relative to the dataset root
    width: int
    height: int
    size_bytes: int
    mtime_ns: int


def _walk(root: Path) -> Iterator[Path]:
    """Every non-hidden file under root (hidden = a path part below root starting with '.').
    Linked folders are followed (datasets are often put together from links), each real folder
    once: a link back up the tree, or a second link to a folder already walked, is not entered."""
    walked: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in walked:
            dirnames[:] = []
            continue
        walked.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"{root}: is a file, not a directory of images")
    return root


def _rel(path: Path, root: Path) -> str:
    try:
        rel = Path(path).relative_to(root).as_posix()
    except ValueError:
        rel = Path(path).as_posix()
    # A name that is not UTF-8 decodes to lone surrogates, which no log line, JSON manifest or
    # tokenizer can take: show its raw bytes as \xNN instead.
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8_name(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def find_images(root: Path) -> list[Path]:
    """Image files under `root` (recursive, case-insensitive extensions, hidden files and
    directories skipped), sorted by their path relative to `root`."""
    root = _check_root(root)
    found = [p for p in _walk(root) if p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def has_images(root: Path) -> bool:
    """Whether any image file lies under `root` (a folder), as find_images finds them: a walk
    that stops at the first one, reading no file."""
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in _walk(root))


def _orientation(image) -> int:
    """The orientation from the metadata PIL already read with the header (never decodes pixels):
    EXIF's tag, else XMP's tiff:Orientation, as ImageOps.exif_transpose reads them when the image
    is decoded, so the planned size and the decoded one agree."""
    from PIL import Image

    value = 1
    try:
        if raw := image.info.get("exif"):
            exif = Image.Exif()
            exif.load(raw)
            value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
        elif xmp := image.info.get("xmp") or image.info.get("XML:com.adobe.xmp"):
            text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
            # Pillow's own pattern (Image.getexif), as an attribute or an element
            if match := re.search(r'tiff:Orientation(="|>)([0-9])', text):
                value = int(match[2])
    except Exception:  # malformed metadata: treat as upright rather than dropping the image
        return 1
    return value if 1 <= value <= 8 else 1


def _probe(path: Path, root: Path) -> ImageInfo | str:
    """ImageInfo, or the reason the file cannot be used."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not _utf8_name(path):
        return "the file name is not valid UTF-8; rename the file"
    try:
        st = path.stat()  # follows symlinks: a loop or a dangling link fails here
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO would block forever; a device could be endless.
        return "not a regular file (a FIFO, socket or device named like an image)"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: judged below, against our own limit
            with open(path, "rb") as f, Image.open(f) as im:
                width, height = im.size
                orientation = _orientation(im)
                fmt = im.format
                f.seek(0)
                head = f.read(12)
                f.seek(max(0, st.st_size - TAIL_BYTES))
                cut = cut_short(fmt, head, f.read(TAIL_BYTES), st.st_size)
    except Image.DecompressionBombError:
        return _too_many_pixels(None, None)
    except PermissionError as e:
        return f"cannot read ({e.strerror}); make it readable (chmod a+r) or remove it"
    except UnidentifiedImageError:
        return "not a readable image (corrupt, truncated or not an image)"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"not a readable image ({str(e) or type(e).__name__})"
    if width <= 0 or height <= 0:
        return f"image has no pixels ({width}x{height})"
    if width * height > MAX_IMAGE_PIXELS:
        return _too_many_pixels(width, height)
    if cut and (undecodable := _decode_problem(path)):
        return f"cannot decode ({undecodable}): the file is truncated, {cut}; copy it again or remove it"
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(path=path, rel=_rel(path, root), width=width, height=height,
                     size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)


TAIL_BYTES = 4096  # read from the end of each image: its end marker, after any padding
# Bytes some cameras and tools write after an image's end: zero fill, 0xFF fill, a line break.
_PADDING = b"\x00\xff\r\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


def cut_short(fmt: str | None, head: bytes, tail: bytes, size: int) -> str | None:
    """Pure: how the ends of an image file say it was cut short, or None when they look whole.
    `fmt` is PIL's format name (the content's, not the extension's), `head` the file's first
    12 bytes, `tail` its last TAIL_BYTES (or all of it), `size` its length. A JPEG (or MPO, a
    JPEG with more pictures after it) must end with FF D9 and a PNG with its IEND chunk, padding
    aside; a WebP must be at least as long as its RIFF header says. Other formats: None."""
    end = tail.rstrip(_PADDING) if fmt in ("JPEG", "MPO", "PNG") else tail
    if fmt in ("JPEG", "MPO") and not end.endswith(b"\xff\xd9"):
        return "no end-of-image marker (FF D9) at its end"
    if fmt == "PNG" and not end.endswith(_PNG_IEND):
        return "no IEND chunk at its end"
    if fmt == "WEBP" and head[:4] == b"RIFF" and len(head) >= 8:
        declared = int.from_bytes(head[4:8], "little") + 8
        if size < declared:
            return f"{size} bytes where its RIFF header says {declared}"
    return None


def _decode_problem(path: Path) -> str | None:
    """Why the image does not decode in full, or None when it does: the check behind a
    cut_short verdict, so a file is skipped only when the cache stage could not decode it either."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__
    return None


def _too_many_pixels(width: int | None, height: int | None) -> str:
    size = f"{width}x{height} is " if width else ""
    return (f"{size}over the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit for one image "
            "(a decompression-bomb guard); downscale it")


def probe(path: Path, root: Path) -> ImageInfo | None:
    """Read the image header: its EXIF-oriented size, byte size and mtime. None if unreadable."""
    result = _probe(path, root)
    return result if isinstance(result, ImageInfo) else None


def _default_workers() -> int:
    return min(16, (os.cpu_count() or 1) * 2)


def scan(root: Path, workers: int | None = None) -> tuple[list[ImageInfo], list[tuple[str, str]]]:
    """Probe every image under `root`. Returns (usable images sorted by rel path, skipped as
    (rel path, reason)). Headers are read by a thread pool (helps on network volumes).
    Raises DatasetError if `root` is not a directory."""
    root = _check_root(root)
    images: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for p in _walk(root):
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images.append(p)
        elif suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
            skipped.append((_rel(p, root), f"unsupported format {suffix} (convert to .jpg, .png or .webp)"))
    images.sort(key=lambda p: _rel(p, root))
    workers = workers or _default_workers()
    if workers > 1 and len(images) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda p: _probe(p, root), images))
    else:
        results = [_probe(p, root) for p in images]
    usable: list[ImageInfo] = []
    for path, result in zip(images, results):
        if isinstance(result, ImageInfo):
            usable.append(result)
        else:
            skipped.append((_rel(path, root), result))
    skipped.sort()
    return usable, skipped


class DigestMemo:
    """Content digests remembered by (absolute path, size, mtime_ns) in a JSON file.

    The cache keys need each image's sha256; without a memo every rerun, and every cache
    worker, would read the whole dataset again (10 GB for 10k photos) to find nothing new.
    A file rewritten in place changes size or mtime, so it is hashed again."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = self._read()

    def _read(self) -> dict[str, list]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged memo only costs re-hashing
        if not isinstance(data, dict):
            return {}
        # Keep only well-formed [size, mtime_ns, sha256] rows: one bad row costs one re-hash.
        return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3
                and all(isinstance(x, int) for x in v[:2]) and isinstance(v[2], str) and len(v[2]) == 64}

    def __call__(self, info: ImageInfo) -> str:
        return self.digest(info.path, info.size_bytes, info.mtime_ns)

    def digest(self, path: Path, size: int | None = None, mtime_ns: int | None = None) -> str:
        """The sha256 of any file (model weights too: see runner.cache.keys.component_fingerprint).
        `size` and `mtime_ns` are read here unless the caller already has them from a probe."""
        if size is None or mtime_ns is None:
            st = os.stat(path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        key = str(Path(path).resolve())
        hit = self.entries.get(key)
        if hit and hit[0] == size and hit[1] == mtime_ns:
            return hit[2]
        digest = file_digest(path)
        self.entries[key] = [size, mtime_ns, digest]
        return digest

    def save(self) -> None:
        """Merge with what other processes saved meanwhile, then write atomically."""
        if self.path is None:
            return
        from runner.files import atomic_write_json

        atomic_write_json(self.path, {**self._read(), **self.entries})
