"""runner.data.transforms: bucket/crop math (table-driven) and applying it to pixels."""
from __future__ import annotations

import itertools
import math
import random

import pytest
from PIL import Image

from runner.data import DatasetError
from runner.data.transforms import (MAX_ASPECT_RATIO, PIXART_ASPECT_BINS_1024, CropPlan, align, apply_crop,
                                    aspect_problem, load_image, meets_minimum, plan_crop, to_rgb)


def plan(w, h, *, res=1.0, rtype="area", crop=True, aspect="square", style="center", maximum=None, tds=None,
         key="k"):
    return plan_crop(w, h, resolution=res, resolution_type=rtype, crop=crop, crop_aspect=aspect, crop_style=style,
                     maximum_image_size=maximum, target_downsample_size=tds, seed_key=key)


@pytest.mark.parametrize("value,expected", [(0, 64), (1, 64), (95, 64), (96, 128), (127.9, 128), (160, 192),
                                            (1024, 1024), (1055, 1024), (1056, 1088)])
def test_align(value, expected):
    assert align(value) == expected


# (w, h, kwargs) -> (downsample, resize, crop_box, target)
CASES = [
    # square, area 1.0 -> 1024x1024; 2000x1000 covers at 2048x1024
    ((2000, 1000, dict(style="center")), (None, (2048, 1024), (512, 0, 1536, 1024), (1024, 1024))),
    ((2000, 1000, dict(style="corner")), (None, (2048, 1024), (0, 0, 1024, 1024), (1024, 1024))),
    ((1000, 2000, dict(style="center")), (None, (1024, 2048), (0, 512, 1024, 1536), (1024, 1024))),
    # square, area 0.25 -> 512x512
    ((512, 512, dict(res=0.25)), (None, (512, 512), (0, 0, 512, 512), (512, 512))),
    # square, pixel 128; upscales a small image to cover
    ((512, 512, dict(res=128, rtype="pixel")), (None, (128, 128), (0, 0, 128, 128), (128, 128))),
    ((100, 50, dict(res=128, rtype="pixel")), (None, (256, 128), (64, 0, 192, 128), (128, 128))),
    # pixel 100 aligns to 128
    ((300, 300, dict(res=100, rtype="pixel")), (None, (128, 128), (0, 0, 128, 128), (128, 128))),
    # preserve, pixel 128 (the rocket: 640x427)
    ((640, 427, dict(res=128, rtype="pixel", aspect="preserve")), (None, (192, 128), (0, 0, 192, 128), (192, 128))),
    # preserve portrait, pixel 128: 550x660 -> 128 x align(153.6)=128
    ((550, 660, dict(res=128, rtype="pixel", aspect="preserve")), (None, (128, 154), (0, 13, 128, 141), (128, 128))),
    # preserve, area 1.0, 3:2 -> 1280x832
    ((1500, 1000, dict(aspect="preserve")), (None, (1280, 853), (0, 10, 1280, 842), (1280, 832))),
    # crop: false -> preserve bucket + centre crop, whatever cropAspect/cropStyle say
    ((1500, 1000, dict(crop=False, aspect="square", style="random")), (None, (1280, 853), (0, 10, 1280, 842), (1280, 832))),
    ((1500, 1000, dict(crop=False, aspect="closest", style="corner")), (None, (1280, 853), (0, 10, 1280, 842), (1280, 832))),
    # closest, area 1.0, 3:2 -> PixArt bin 1216x832
    ((1500, 1000, dict(aspect="closest")), (None, (1248, 832), (16, 0, 1232, 832), (1216, 832))),
    ((1000, 1000, dict(aspect="closest", res=256, rtype="pixel")), (None, (256, 256), (0, 0, 256, 256), (256, 256))),
    ((2000, 500, dict(aspect="closest", res=128, rtype="pixel")), (None, (512, 128), (0, 0, 512, 128), (512, 128))),
    ((500, 2000, dict(aspect="closest", res=0.25)), (None, (256, 1024), (0, 0, 256, 1024), (256, 1024))),
    # maximumImageSize (pixel): 4000x3000 > 1000 -> downsample to short side 500
    ((4000, 3000, dict(res=256, rtype="pixel", maximum=1000, tds=500)),
     ((667, 500), (342, 256), (43, 0, 299, 256), (256, 256))),
    # not over the maximum: no downsample
    ((800, 600, dict(res=256, rtype="pixel", maximum=1000, tds=500)),
     (None, (341, 256), (42, 0, 298, 256), (256, 256))),
    # maximumImageSize (area): 4096x2048 = 8 units > 2 -> 1.0 unit = 1448x724
    ((4096, 2048, dict(res=0.25, maximum=2.0, tds=1.0)),
     ((1448, 724), (1024, 512), (256, 0, 768, 512), (512, 512))),
    # downsample target larger than the image: never upsample
    ((2048, 2048, dict(res=0.25, maximum=1.0, tds=8.0)), (None, (512, 512), (0, 0, 512, 512), (512, 512))),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[f"{a[0]}x{a[1]}-{a[2]}" for a, _ in CASES])
def test_plan_crop_table(args, expected):
    w, h, kw = args
    p = plan(w, h, **kw)
    assert (p.downsample_size, p.resize_size, p.crop_box, p.target_size) == expected
    assert p.source_size == (w, h)


@pytest.mark.parametrize("aspect,rtype,res", [("preserve", "area", 1.0), ("closest", "area", 1.0),
                                              ("preserve", "pixel", 512), ("closest", "pixel", 512)])
def test_buckets_have_the_right_size(aspect, rtype, res):
    for w, h in [(1000, 1000), (1600, 900), (900, 1600), (3000, 1000), (1200, 1000)]:
        tw, th = plan(w, h, res=res, rtype=rtype, aspect=aspect).target_size
        if rtype == "area":  # within the 64-px rounding of 1 MP
            assert abs(tw * th - 1024 * 1024) / (1024 * 1024) < 0.15, (w, h, tw, th)
        else:
            assert min(tw, th) == 512 or (aspect == "closest" and abs(min(tw, th) - 512) <= 64)
        assert (tw >= th) == (w >= h) or w == h


def test_closest_bins_at_1mp_are_pixart_bins():
    for bw, bh in PIXART_ASPECT_BINS_1024:
        assert plan(bw, bh, aspect="closest").target_size == (bw, bh)


def test_random_crop_is_deterministic_and_depends_on_key():
    boxes = {plan(3000, 1000, style="random", key=f"digest{i}:42").crop_box for i in range(20)}
    assert len(boxes) > 5
    for i in range(20):
        a = plan(3000, 1000, style="random", key=f"digest{i}:42")
        assert a == plan(3000, 1000, style="random", key=f"digest{i}:42")
        left, top, right, bottom = a.crop_box
        assert top == 0 and 0 <= left and right <= a.resize_size[0]


def test_random_crop_moves_on_both_axes_when_possible():
    p = plan(1000, 3000, res=0.25, style="random", key="x")
    assert p.crop_box[0] == 0 and p.crop_box[1] > 0


def test_plan_invariants_property():
    rng = random.Random(0)
    combos = list(itertools.product([True, False], ["square", "preserve", "closest"], ["random", "center", "corner"],
                                    [("area", 0.25), ("area", 1.0), ("pixel", 128), ("pixel", 333)]))
    for _ in range(400):
        w, h = rng.randint(1, 5000), rng.randint(1, 5000)
        crop, aspect, style, (rtype, res) = rng.choice(combos)
        maximum = rng.choice([None, 2.0 if rtype == "area" else 1500])
        tds = 1.0 if rtype == "area" else 800
        p = plan(w, h, res=res, rtype=rtype, crop=crop, aspect=aspect, style=style, maximum=maximum, tds=tds,
                 key=str(rng.random()))
        tw, th = p.target_size
        left, top, right, bottom = p.crop_box
        rw, rh = p.resize_size
        assert tw % 64 == 0 and th % 64 == 0 and tw >= 64 and th >= 64
        assert 0 <= left < right <= rw and 0 <= top < bottom <= rh
        assert (right - left, bottom - top) == (tw, th)
        base = p.downsample_size or p.source_size
        # the cover resize keeps the aspect up to rounding and one side is tight
        assert rw == tw or rh == th
        assert abs(rw / rh - base[0] / base[1]) <= base[0] / base[1] * (1.5 / min(rw, rh)) + 1e-9
        if not crop:  # minimal centred crop
            assert (left, top) == ((rw - tw) // 2, (rh - th) // 2)


@pytest.mark.parametrize("kw,match", [
    (dict(style="diagonal"), "cropStyle"),
    (dict(aspect="wide"), "cropAspect"),
    (dict(rtype="megapixel"), "resolutionType"),
    (dict(maximum=0.5, tds=None), "targetDownsampleSize"),
    (dict(res=0), "resolution"),
])
def test_plan_crop_rejects_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        plan(2000, 1000, **kw)


@pytest.mark.parametrize("w,h,minimum,rtype,ok", [
    (512, 512, None, "area", True),
    (512, 512, 0, "pixel", True),
    (512, 512, 0.25, "area", True),
    (511, 512, 0.25, "area", False),
    (1024, 1024, 1.0, "area", True),
    (1024, 1023, 1.0, "area", False),
    (640, 64, 64, "pixel", True),
    (640, 63, 64, "pixel", False),
    (63, 640, 64, "pixel", False),
])
def test_meets_minimum(w, h, minimum, rtype, ok):
    assert meets_minimum(w, h, minimum, rtype) is ok


# ----------------------------------------------------------------------------- pixels

def halves(size=(200, 100)) -> Image.Image:
    im = Image.new("RGB", size, (255, 0, 0))
    im.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return im


def close(a, b, tol=8):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


@pytest.mark.parametrize("style,left_color,right_color", [
    ("corner", (255, 0, 0), (255, 0, 0)),
    ("center", (255, 0, 0), (0, 0, 255)),
])
def test_apply_crop_cuts_the_planned_window(style, left_color, right_color):
    p = plan(200, 100, res=64, rtype="pixel", style=style)
    assert p.resize_size == (128, 64)
    out = apply_crop(halves(), p)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert close(out.getpixel((2, 32)), left_color)
    assert close(out.getpixel((61, 32)), right_color)


def test_apply_crop_with_downsample_and_preserve():
    p = plan(400, 200, res=64, rtype="pixel", aspect="preserve", maximum=150, tds=100)
    assert p.downsample_size == (200, 100)
    out = apply_crop(halves((400, 200)), p)
    assert out.size == p.target_size == (128, 64)
    assert close(out.getpixel((5, 30)), (255, 0, 0)) and close(out.getpixel((122, 30)), (0, 0, 255))


def test_apply_crop_exif_rotated_jpeg(tmp_path):
    from runner.data.discovery import probe

    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    halves((120, 80)).save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    info = probe(path, tmp_path)
    assert (info.width, info.height) == (80, 120)
    p = plan(info.width, info.height, res=64, rtype="pixel", aspect="preserve")
    assert p.target_size == (64, 128)  # 80x120 portrait: 64 x align(96)
    with Image.open(path) as im:
        out = apply_crop(im, p)
    assert out.size == p.target_size
    # after rotating 90 CW, the red left half becomes the top
    assert out.getpixel((32, 2))[0] > 200 and out.getpixel((32, out.height - 3))[2] > 200
    assert load_image(path).size == (80, 120)


def test_apply_crop_rejects_changed_image():
    p = plan(200, 100, res=64, rtype="pixel")
    with pytest.raises(DatasetError, match="changed since it was scanned"):
        apply_crop(halves((300, 100)), p)
    with pytest.raises(ValueError):  # what callers catching PIL's errors already catch
        apply_crop(halves((300, 100)), p)


@pytest.mark.parametrize("mode,fill,expected", [
    ("RGBA", (10, 20, 30, 0), (255, 255, 255)),      # transparent -> white
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("LA", (100, 0), (255, 255, 255)),
    ("L", 77, (77, 77, 77)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 32768, (128, 128, 128)),
])
def test_to_rgb(mode, fill, expected):
    im = Image.new(mode, (8, 8), fill)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.getpixel((3, 3)) == expected


@pytest.mark.parametrize("mode, transparent, other", [
    ("L", 0, 90), ("RGB", (0, 0, 0), (90, 90, 90)), ("P", 0, 1)])
def test_a_png_transparent_colour_becomes_white_in_every_mode(tmp_path, mode, transparent, other):
    """A PNG tRNS chunk names one transparent colour: read back, its pixels become white, as RGBA
    and palette images' transparent pixels do, and the other pixels keep their colour."""
    im = Image.new(mode, (8, 8), transparent)
    im.putpixel((0, 0), other)
    if mode == "P":
        im.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
    im.save(tmp_path / "t.png", transparency=transparent if mode != "P" else 0)
    out = to_rgb(Image.open(tmp_path / "t.png"))
    assert out.mode == "RGB" and out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (90, 90, 90)


def test_apply_crop_returns_exact_target_for_odd_sizes():
    rng = random.Random(1)
    for _ in range(15):
        w, h = rng.randint(30, 700), rng.randint(30, 700)
        for aspect in ("square", "preserve", "closest"):
            p = plan(w, h, res=128, rtype="pixel", aspect=aspect, style="random", key=f"{w}x{h}")
            assert apply_crop(Image.new("RGB", (w, h), (1, 2, 3)), p).size == p.target_size


def test_cropplan_is_frozen():
    p = plan(100, 100, res=64, rtype="pixel")
    assert isinstance(p, CropPlan)
    with pytest.raises(Exception):
        p.target_size = (1, 1)  # type: ignore[misc]
    assert math.isclose(p.resize_size[0] / p.resize_size[1], 1.0)


# ----------------------------------------------------------------------------- aspect limit

def test_max_aspect_ratio_is_pixarts_widest_bin():
    assert MAX_ASPECT_RATIO == 4
    assert max(max(w, h) / min(w, h) for w, h in PIXART_ASPECT_BINS_1024) == 4.0


@pytest.mark.parametrize("width,height,fragment", [
    (1024, 1024, None),
    (2048, 512, None),            # exactly 4:1: PixArt's widest bin
    (512, 2048, None),
    (4000, 1000, None),
    (4001, 1000, "4001x1000 has aspect ratio 4.001:1, beyond the 4:1 limit"),
    (1000, 4001, "1000x4001 has aspect ratio 4.001:1, beyond the 4:1 limit"),
    (20000, 100, "20000x100 has aspect ratio 200:1, beyond the 4:1 limit"),
    (3, 900, "3x900 has aspect ratio 300:1, beyond the 4:1 limit"),
    (5, 1, "5x1 has aspect ratio 5:1"),
    (1, 1, None),
])
def test_aspect_problem_table(width, height, fragment):
    problem = aspect_problem(width, height)
    if fragment is None:
        assert problem is None
    else:
        assert fragment in problem
        assert "crop it to at most 4:1 or remove it" in problem
