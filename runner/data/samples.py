"""`type: samples`: the real photos that ship inside scikit-image, written as captioned PNGs.

Only images bundled in the scikit-image wheel are used (no pooch download), so this works
offline. Files are named by their caption (`a ginger cat.png`) for `captionStrategy: filename`.
Natural sizes are kept (capped at 1024 px on the longer side), so several aspect ratios
exist: most are 512x512, others are 3:2, 4:3, 5:6 or about 2:1.
"""
from __future__ import annotations

from pathlib import Path

from runner.data import DatasetError
from runner.files import BuildMarker, build_dir_once

MARKER = ".samples-complete.json"
SAMPLES_VERSION = 1
MAX_SIDE = 1024
MIN_SAMPLES = 12
COMPLETE = BuildMarker(MARKER, SAMPLES_VERSION)  # written last: lists the photos written

# (skimage.data function, caption). All are bundled with the scikit-image distribution.
SAMPLES: tuple[tuple[str, str], ...] = (
    ("astronaut", "an astronaut in a space suit"),
    ("camera", "a black and white photo of a man with a camera on a tripod"),
    ("chelsea", "a ginger cat"),
    ("coffee", "a cup of coffee"),
    ("coins", "old coins on a dark background"),
    ("rocket", "a rocket on a launch pad"),
    ("hubble_deep_field", "galaxies in the hubble deep field"),
    ("immunohistochemistry", "a microscope image of stained tissue"),
    ("moon", "the surface of the moon"),
    ("brick", "a brick wall"),
    ("grass", "a patch of grass"),
    ("gravel", "gravel on the ground"),
    ("clock", "a blurred wall clock"),
    ("retina", "a photo of the back of a human eye"),
    ("cell", "a microscope image of a cell"),
    ("stereo_motorcycle", "a motorcycle in a workshop"),
    ("page", "a scanned page of printed text"),
)


def _to_rgb_image(array):
    import numpy as np
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / ((hi - lo) or 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    image = Image.fromarray(arr)
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def _load(name: str):
    import skimage.data

    value = getattr(skimage.data, name)()
    if isinstance(value, tuple):  # stereo_motorcycle -> (left, right, disparity)
        value = value[0]
    return value


def materialize_samples(dest: Path) -> Path:
    """Write the sample photos to `dest` (once) and return it.

    Idempotent and safe against concurrent callers: files are written to a temporary sibling
    directory which is renamed into place with a marker file last; a `dest` that already holds
    a complete set is returned as is. Raises DatasetError if scikit-image is missing, fewer
    than 12 photos load, or `dest` exists but is not a samples directory."""
    dest = Path(dest)
    if COMPLETE.is_complete(dest):
        return dest
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        raise DatasetError("type: samples needs scikit-image; install it with "
                           "pip install 'trainingjob-runner[samples]' (or pip install scikit-image)") from None

    def fill(tmp: Path) -> None:
        written, failed = [], []
        for func, caption in SAMPLES:
            try:
                image = _to_rgb_image(_load(func))
            except Exception as e:  # a scikit-image version without this photo, or one that needs a download
                failed.append(f"{func} ({type(e).__name__})")
                continue
            name = f"{caption}.png"
            image.save(tmp / name, format="PNG", compress_level=1)
            written.append(name)
        if len(written) < MIN_SAMPLES:
            raise DatasetError(f"type: samples: only {len(written)} scikit-image photos could be loaded offline "
                               f"(need {MIN_SAMPLES}); failed: {', '.join(failed)}. Upgrade scikit-image or use a local dataset")
        COMPLETE.write(tmp, files=written)

    def ours(folder: Path) -> bool:  # an older samples version, or an empty folder
        return (folder / MARKER).exists() or (folder.is_dir() and not any(folder.iterdir()))

    try:
        return build_dir_once(dest, fill, COMPLETE.is_complete, may_replace=ours)
    except FileExistsError:
        raise DatasetError(f"{dest}: exists but is not a samples directory written by this tool; "
                           "delete it or point spec.cacheDir elsewhere") from None
