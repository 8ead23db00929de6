"""Resize and crop math (pure) plus the one function that applies it to pixels.

Units (per dataset, `resolutionType`):
    area   `resolution` is in megapixels where 1.0 == 1024*1024 px (so 0.25 == 512x512).
    pixel  `resolution` is the length of the shorter side in px.
`minimumImageSize`, `maximumImageSize` and `targetDownsampleSize` use the same unit.

Planning (`plan_crop`), for an image of (width, height) after EXIF orientation:
 1. If `maximum_image_size` is set and the image is larger, downsample it (aspect kept) to
    `target_downsample_size` (never upsamples).
 2. Pick the target bucket, both sides multiples of 64 (at least 64):
      square    one square side: sqrt(resolution)*1024 (area) or resolution (pixel);
      preserve  the image's own aspect at the target area / shorter side;
      closest   the nearest (in log aspect) of PixArt's aspect-ratio bins, scaled to the
                target area / shorter side.
    `crop: false` always uses the `preserve` bucket (only resize to the nearest aligned size).
 3. Resize so the image covers the target (may upscale small images), then cut the target
    window: `center`, `corner` (top-left) or `random`. `crop: false` cuts the minimal centred
    window. The random offset comes from a hash of `seed_key`, so a rerun crops identically.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from runner.data import DatasetError

ALIGN = 64
MEGAPIXEL = 1024 * 1024
RESOLUTION_TYPES = ("area", "pixel")
CROP_ASPECTS = ("square", "preserve", "closest")
CROP_STYLES = ("random", "center", "corner")

# PixArt's multi-aspect bins at 1024 px (diffusers ASPECT_RATIO_1024_BIN), as (width, height).
PIXART_ASPECT_BINS_1024: tuple[tuple[int, int], ...] = (
    (2048, 512), (1856, 512), (1792, 576), (1728, 576), (1664, 576), (1600, 640), (1536, 640),
    (1472, 704), (1408, 704), (1344, 704), (1344, 768), (1280, 768), (1216, 832), (1152, 832),
    (1152, 896), (1088, 896), (1088, 960), (1024, 960), (1024, 1024), (960, 1024), (960, 1088),
    (896, 1088), (896, 1152), (832, 1152), (832, 1216), (768, 1280), (768, 1344), (704, 1408),
    (704, 1472), (640, 1536), (640, 1600), (576, 1728), (512, 2048),
)

# The widest of those bins is 4:1 either way (2048x512, 512x2048): an image beyond it has no
# bin, and its preserve/crop-false target grows with its aspect (20000x100 at 1024 px would be
# a 204800x1024 sample), so plan_dataset skips it.
MAX_ASPECT_RATIO: int = max(max(w, h) // min(w, h) for w, h in PIXART_ASPECT_BINS_1024)


class ImageMismatchError(DatasetError, ValueError):
    """The image handed to apply_crop is not the size its plan was made for; `sizes` says how."""

    def __init__(self, sizes: str):
        super().__init__(f"{sizes}; the file changed since it was scanned")
        self.sizes = sizes

    def __reduce__(self):  # decode workers send it back pickled
        return type(self), (self.sizes,)


@dataclass(frozen=True)
class CropPlan:
    """How one image becomes one training sample. Sizes are (width, height)."""

    source_size: tuple[int, int]
    downsample_size: tuple[int, int] | None
    resize_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in resize_size coordinates
    target_size: tuple[int, int]  # both multiples of 64

    @property
    def enlargement(self) -> float:
        """How many times wider the image is resized to fill its bucket (1.0 or less: not enlarged)."""
        return self.resize_size[0] / (self.downsample_size or self.source_size)[0]


# ----------------------------------------------------------------------------- units

def align(value: float, multiple: int = ALIGN) -> int:
    """Nearest multiple of `multiple` (halves round up), at least `multiple`."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def image_size_in_units(width: int, height: int, resolution_type: str) -> float:
    """An image's size in the dataset's unit: megapixels (area) or shorter side px (pixel)."""
    if resolution_type == "area":
        return width * height / MEGAPIXEL
    if resolution_type == "pixel":
        return float(min(width, height))
    raise ValueError(f"unknown resolutionType {resolution_type!r}; expected area or pixel")


def meets_minimum(width: int, height: int, minimum: float | None, resolution_type: str) -> bool:
    """True if the image is at least `minimum` (None or 0 keeps everything)."""
    if not minimum:
        return True
    return image_size_in_units(width, height, resolution_type) >= minimum


def scale_to_size(width: int, height: int, size: float, resolution_type: str) -> tuple[int, int]:
    """(width, height) scaled, aspect kept, so the image measures `size` in the given unit."""
    if resolution_type == "area":
        scale = math.sqrt(size * MEGAPIXEL / (width * height))
    elif resolution_type == "pixel":
        scale = size / min(width, height)
    else:
        raise ValueError(f"unknown resolutionType {resolution_type!r}; expected area or pixel")
    return max(1, round(width * scale)), max(1, round(height * scale))


def aspect_problem(width: int, height: int, limit: int = MAX_ASPECT_RATIO) -> str | None:
    """Why a width x height image is too elongated to train on (longer side more than `limit`
    times the shorter), or None when it is within limit:1 either way."""
    longer, shorter = max(width, height), min(width, height)
    if shorter <= 0 or longer <= limit * shorter:
        return None
    return (f"{width}x{height} has aspect ratio {longer / shorter:.4g}:1, beyond the {limit}:1 limit "
            f"(PixArt's widest aspect bin); crop it to at most {limit}:1 or remove it")


# ----------------------------------------------------------------------------- buckets

def square_bucket(resolution: float, resolution_type: str) -> tuple[int, int]:
    side = math.sqrt(resolution) * 1024 if resolution_type == "area" else resolution
    s = align(side)
    return s, s


def preserve_bucket(width: int, height: int, resolution: float, resolution_type: str) -> tuple[int, int]:
    """The image's aspect at the target area (area) or shorter side (pixel), 64-aligned."""
    aspect = width / height
    if resolution_type == "area":
        pixels = resolution * MEGAPIXEL
        return align(math.sqrt(pixels * aspect)), align(math.sqrt(pixels / aspect))
    if width >= height:
        return align(resolution * aspect), align(resolution)
    return align(resolution), align(resolution / aspect)


def closest_bucket(width: int, height: int, resolution: float, resolution_type: str) -> tuple[int, int]:
    """The PixArt aspect bin nearest the image's aspect (log ratio), scaled and 64-aligned."""
    log_aspect = math.log(width / height)
    bw, bh = min(PIXART_ASPECT_BINS_1024, key=lambda b: abs(math.log(b[0] / b[1]) - log_aspect))
    if resolution_type == "area":
        scale = math.sqrt(resolution)
    else:
        scale = resolution / min(bw, bh)
    return align(bw * scale), align(bh * scale)


def target_bucket(width: int, height: int, *, resolution: float, resolution_type: str,
                  crop: bool, crop_aspect: str) -> tuple[int, int]:
    if resolution_type not in RESOLUTION_TYPES:
        raise ValueError(f"unknown resolutionType {resolution_type!r}; expected area or pixel")
    if not crop or crop_aspect == "preserve":
        return preserve_bucket(width, height, resolution, resolution_type)
    if crop_aspect == "square":
        return square_bucket(resolution, resolution_type)
    if crop_aspect == "closest":
        return closest_bucket(width, height, resolution, resolution_type)
    raise ValueError(f"unknown cropAspect {crop_aspect!r}; expected one of {', '.join(CROP_ASPECTS)}")


# ----------------------------------------------------------------------------- plan

def _seeded_offsets(seed_key: str, span_x: int, span_y: int) -> tuple[int, int]:
    digest = hashlib.sha256(seed_key.encode("utf-8")).digest()
    a = int.from_bytes(digest[:8], "big")
    b = int.from_bytes(digest[8:16], "big")
    return a % (span_x + 1), b % (span_y + 1)


def plan_crop(width: int, height: int, *, resolution: float, resolution_type: str, crop: bool,
              crop_aspect: str, crop_style: str, maximum_image_size: float | None = None,
              target_downsample_size: float | None = None, seed_key: str) -> CropPlan:
    """Plan the downsample, cover-resize and crop of a width x height image (see module doc)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if crop_style not in CROP_STYLES:
        raise ValueError(f"unknown cropStyle {crop_style!r}; expected one of {', '.join(CROP_STYLES)}")
    source = (int(width), int(height))
    w, h = source
    downsample: tuple[int, int] | None = None
    if maximum_image_size is not None and image_size_in_units(w, h, resolution_type) > maximum_image_size:
        if target_downsample_size is None:
            raise ValueError("maximumImageSize is set but targetDownsampleSize is not")
        dw, dh = scale_to_size(w, h, target_downsample_size, resolution_type)
        if dw * dh < w * h:  # only ever shrink
            downsample = (dw, dh)
            w, h = dw, dh

    tw, th = target_bucket(w, h, resolution=resolution, resolution_type=resolution_type,
                           crop=crop, crop_aspect=crop_aspect)
    scale = max(tw / w, th / h)
    rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))

    span_x, span_y = rw - tw, rh - th
    style = crop_style if crop else "center"
    if style == "center":
        left, top = span_x // 2, span_y // 2
    elif style == "corner":
        left, top = 0, 0
    else:
        left, top = _seeded_offsets(seed_key, span_x, span_y)
    plan = CropPlan(source_size=source, downsample_size=downsample, resize_size=(rw, rh),
                    crop_box=(left, top, left + tw, top + th), target_size=(tw, th))
    _check_plan(plan)
    return plan


def _check_plan(plan: CropPlan) -> None:
    left, top, right, bottom = plan.crop_box
    rw, rh = plan.resize_size
    tw, th = plan.target_size
    if not (0 <= left < right <= rw and 0 <= top < bottom <= rh):
        raise AssertionError(f"crop box {plan.crop_box} outside the resized image {rw}x{rh}")
    if (right - left, bottom - top) != (tw, th):
        raise AssertionError(f"crop box {plan.crop_box} is not the target size {tw}x{th}")
    if tw % ALIGN or th % ALIGN:
        raise AssertionError(f"target {tw}x{th} is not a multiple of {ALIGN}")


# ----------------------------------------------------------------------------- pixels

def to_rgb(image):
    """Any PIL image -> 8-bit RGB. Transparent pixels (an alpha channel, or a PNG's transparent
    colour in palette, greyscale and RGB images alike) are composited onto white; 16-bit and
    float greyscale are scaled to 0-255 instead of clipped."""
    from PIL import Image

    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        else:
            top = float(arr.max()) if arr.size and arr.max() > 255 else 255.0
        arr = np.clip(arr / (top or 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:  # a tRNS chunk: one colour is transparent
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: Path):
    """Decode an image fully (EXIF-transposed, RGB). Raises DatasetError naming the file when
    the body is corrupt or truncated (the probe sees a file cut short, not one damaged in the middle)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot decode image ({str(e) or type(e).__name__}); "
                           "the file is corrupt or truncated, delete or replace it") from None


def apply_crop(image, plan: CropPlan):
    """Apply a plan to a PIL image: EXIF transpose, RGB, LANCZOS downsample/resize, crop.
    Returns an RGB image of exactly `plan.target_size`. Raises ImageMismatchError (a
    DatasetError and a ValueError) if the image is not `plan.source_size` after transposing."""
    from PIL import Image, ImageOps

    image = to_rgb(ImageOps.exif_transpose(image))
    if image.size != plan.source_size:
        raise ImageMismatchError(f"image is {image.size[0]}x{image.size[1]} but was planned as "
                                 f"{plan.source_size[0]}x{plan.source_size[1]}")
    if plan.downsample_size is not None and image.size != plan.downsample_size:
        image = image.resize(plan.downsample_size, Image.Resampling.LANCZOS)
    if image.size != plan.resize_size:
        image = image.resize(plan.resize_size, Image.Resampling.LANCZOS)
    out = image.crop(plan.crop_box)
    if out.size != plan.target_size:  # cannot happen for a checked plan
        raise AssertionError(f"cropped to {out.size}, expected {plan.target_size}")
    return out


RERUN_CACHE = "re-run the cache stage (trainingjob run FILE --stage cache) so it plans the dataset as it is now"


def crop_planned_file(path: Path | str, plan: CropPlan):
    """Decode the image at `path` and apply `plan` to it: images planned by the cache stage and
    decoded later, while training (vaeCacheDisable). Raises DatasetError naming the file and
    saying to re-run the cache stage when the file is gone, unreadable, corrupt, or no longer
    the size it was planned for."""
    from PIL import Image

    def changed(what: str) -> DatasetError:
        return DatasetError(f"{path}: {what}; the file changed after the cache stage planned it, {RERUN_CACHE}")

    try:
        with Image.open(path) as im:
            im.load()
            return apply_crop(im, plan)
    except ImageMismatchError as e:
        raise changed(e.sizes) from None
    except FileNotFoundError:
        raise changed("the image no longer exists") from None
    except Image.DecompressionBombError:
        raise changed("the image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        raise changed(f"cannot read or decode the image ({reason})") from None
