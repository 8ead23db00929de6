"""runner.data.discovery: finding images, header probing, EXIF orientation, corrupt files."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from runner.data import DatasetError
from runner.data.discovery import IMAGE_EXTENSIONS, ImageInfo, cut_short, find_images, probe, scan


def write_image(path: Path, size=(96, 64), fmt=None, orientation: int | None = None, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix.lower()]
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    im.save(path, format=fmt, **kwargs)
    return path


def test_extensions_constant():
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp")


def test_find_images_recursive_sorted_case_insensitive_skips_hidden(tmp_path):
    for rel in ["b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.WebP", "e.Png"]:
        write_image(tmp_path / rel)
    for rel in [".hidden.png", ".git/x.png", "sub/.cache/y.jpg", "notes.txt", "f.gif"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.JPG", "b.png", "e.Png", "sub/c.jpeg", "sub/deeper/d.WebP"]


def test_find_images_inside_hidden_root_still_works(tmp_path):
    root = tmp_path / ".cache" / "ds"
    write_image(root / "x.png")
    assert [p.name for p in find_images(root)] == ["x.png"]


@pytest.mark.parametrize("name,fmt", [("x.jpg", "JPEG"), ("x.png", "PNG"), ("x.webp", "WEBP")])
def test_probe_reads_size_and_stat(tmp_path, name, fmt):
    p = write_image(tmp_path / "d" / name, size=(130, 70), fmt=fmt)
    info = probe(p, tmp_path)
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height) == (130, 70)
    assert info.rel == f"d/{name}"
    assert info.size_bytes == p.stat().st_size
    assert info.mtime_ns == p.stat().st_mtime_ns


@pytest.mark.parametrize("orientation,expected", [
    (1, (120, 80)), (2, (120, 80)), (3, (120, 80)), (4, (120, 80)),
    (5, (80, 120)), (6, (80, 120)), (7, (80, 120)), (8, (80, 120)),
])
def test_probe_applies_exif_orientation(tmp_path, orientation, expected):
    p = write_image(tmp_path / "o.jpg", size=(120, 80), orientation=orientation)
    info = probe(p, tmp_path)
    assert (info.width, info.height) == expected


def test_probe_exif_orientation_in_png_and_webp(tmp_path):
    for name in ("o.png", "o.webp"):
        p = write_image(tmp_path / name, size=(120, 80), orientation=6)
        info = probe(p, tmp_path)
        assert (info.width, info.height) == (80, 120), name


def _jpeg_bytes(size=(200, 150)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name,content", [
    ("junk.png", b"this is not a png at all" * 10),
    ("empty.jpg", b""),
    ("header_cut.jpg", _jpeg_bytes()[:40]),          # truncated inside the header
    ("png_magic_only.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 8),
    ("text.webp", b"RIFF....WEBPnope"),
])
def test_probe_returns_none_for_corrupt(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    assert probe(p, tmp_path) is None


def test_probe_missing_file_is_none(tmp_path):
    assert probe(tmp_path / "nope.png", tmp_path) is None


def _photo_bytes(fmt: str, size=(256, 256)) -> bytes:
    """A noisy image (its pixel data is most of the file, like a photo's) in `fmt`."""
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


JPEG, PNG = _photo_bytes("JPEG"), _photo_bytes("PNG")
IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
RIFF = b"RIFF" + (5000).to_bytes(4, "little") + b"WEBP"

CUT_SHORT_CASES = [
    # id, PIL format, head, tail, file size -> a fragment of the verdict (None: looks whole)
    ("jpeg-whole", "JPEG", JPEG[:12], JPEG[-4096:], len(JPEG), None),
    ("jpeg-zero-padding", "JPEG", JPEG[:12], JPEG[-100:] + b"\x00" * 300, 9999, None),
    ("jpeg-ff-fill-and-newline", "JPEG", JPEG[:12], JPEG[-100:] + b"\xff\xff\r\n", 9999, None),
    ("jpeg-cut", "JPEG", JPEG[:12], JPEG[:3000][-4096:], 3000, "no end-of-image marker (FF D9)"),
    ("jpeg-cut-then-zero-filled", "JPEG", JPEG[:12], JPEG[:3000] + b"\x00" * 500, 3500, "FF D9"),
    ("jpeg-trailer-after-marker", "JPEG", JPEG[:12], JPEG[-10:] + b"ftypmp42" * 50, 9999, "FF D9"),
    ("mpo-cut", "MPO", JPEG[:12], JPEG[:-2], len(JPEG) - 2, "FF D9"),
    ("png-whole", "PNG", PNG[:12], PNG[-4096:], len(PNG), None),
    ("png-zero-padding", "PNG", PNG[:12], PNG[-50:] + b"\x00" * 64, 9999, None),
    ("png-cut", "PNG", PNG[:12], PNG[: len(PNG) // 2][-4096:], len(PNG) // 2, "no IEND chunk"),
    ("png-without-iend", "PNG", PNG[:12], PNG[:-12][-4096:], len(PNG) - 12, "no IEND chunk"),
    ("webp-whole", "WEBP", RIFF, b"", 5008, None),
    ("webp-longer-than-riff", "WEBP", RIFF, b"", 6000, None),
    ("webp-cut", "WEBP", RIFF, b"", 3000, "3000 bytes where its RIFF header says 5008"),
    ("gif-not-checked", "GIF", b"GIF89a", b"", 10, None),
]


@pytest.mark.parametrize("fmt,head,tail,size,expected", [c[1:] for c in CUT_SHORT_CASES],
                         ids=[c[0] for c in CUT_SHORT_CASES])
def test_cut_short(fmt, head, tail, size, expected):
    verdict = cut_short(fmt, head, tail, size)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and expected in verdict


@pytest.mark.parametrize("name,content", [
    ("cut at 3000 bytes.jpg", JPEG[:3000]),
    ("cut in half.jpg", JPEG[: len(JPEG) // 2]),
    ("cut in half then zero filled.jpg", JPEG[: len(JPEG) // 2] + b"\x00" * 2000),
    ("only the marker missing.jpg", JPEG[:-2]),
    ("cut in half.png", PNG[: len(PNG) // 2]),
    ("cut in half.webp", _photo_bytes("WEBP")[:1500]),
])
def test_truncated_image_is_skipped_by_the_probe(tmp_path, name, content):
    """A file cut short is skipped when the folder is scanned (what validate, the cache stage's
    plan and --smoke all do), not only once the cache stage decodes it."""
    from runner.data.transforms import load_image

    write_image(tmp_path / "good.jpg")
    (tmp_path / name).write_bytes(content)
    usable, skipped = scan(tmp_path)
    assert [i.rel for i in usable] == ["good.jpg"]
    [(rel, reason)] = skipped
    assert rel == name and ("truncated" in reason or "not a readable image" in reason), reason
    with pytest.raises(DatasetError, match="corrupt or truncated"):  # what the cache stage would have met
        load_image(tmp_path / name)


@pytest.mark.parametrize("name,content", [
    ("zero padded.jpg", JPEG + b"\x00" * 5000),                 # padding past TAIL_BYTES: decoded, used
    ("video appended.jpg", JPEG + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40),  # a motion photo
    ("no iend.png", PNG[:-12]),                                 # Pillow decodes it: so does the cache stage
])
def test_file_whose_end_looks_cut_but_decodes_is_used(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    usable, skipped = scan(tmp_path)
    assert skipped == [] and [(i.rel, i.width, i.height) for i in usable] == [(name, 256, 256)]


def test_truncated_jpeg_reason_names_the_cause(tmp_path):
    (tmp_path / "b.jpg").write_bytes(JPEG[:3000])
    [(_, reason)] = scan(tmp_path)[1]
    assert reason.startswith("cannot decode (image file is truncated")
    assert "no end-of-image marker (FF D9)" in reason and "copy it again or remove it" in reason


def test_scan_splits_usable_and_skipped(tmp_path):
    write_image(tmp_path / "good1.png", size=(64, 64))
    write_image(tmp_path / "sub/good2.jpg", size=(100, 50))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "trunc.jpg").write_bytes(_jpeg_bytes()[:30])
    (tmp_path / "empty.webp").write_bytes(b"")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "caption.txt").write_text("hello")
    usable, skipped = scan(tmp_path)
    assert [i.rel for i in usable] == ["good1.png", "sub/good2.jpg"]
    assert [(i.width, i.height) for i in usable] == [(64, 64), (100, 50)]
    reasons = dict(skipped)
    assert set(reasons) == {"bad.png", "trunc.jpg", "empty.webp", "anim.gif"}
    assert "not a readable image" in reasons["bad.png"]
    assert "empty" in reasons["empty.webp"]
    assert "unsupported format .gif" in reasons["anim.gif"]


@pytest.mark.parametrize("workers", [1, 4])
def test_scan_is_deterministic_across_worker_counts(tmp_path, workers):
    for i in range(12):
        write_image(tmp_path / f"d{i % 3}" / f"img_{i:02d}.png", size=(64 + i, 64))
    usable, skipped = scan(tmp_path, workers=workers)
    assert [i.rel for i in usable] == sorted(i.rel for i in usable)
    assert len(usable) == 12 and skipped == []


@pytest.mark.parametrize("make", ["missing", "file"])
def test_scan_bad_root_raises(tmp_path, make):
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")
    with pytest.raises(DatasetError, match="root"):
        scan(root)


# ----------------------------------------------------------------------------- hostile files

def png_bomb(path: Path, side: int = 20000) -> Path:
    """A real decompression bomb: a valid 1-bit PNG of side x side pixels (400 megapixels at
    the default) whose all-zero data deflates to about 50 KB. Written row by row, so making it
    never holds the pixels in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("pil_limit", ["default", "lifted"])
def test_decompression_bomb_is_skipped_even_when_pillow_limit_is_lifted(tmp_path, pil_limit, monkeypatch):
    from runner.data import discovery

    png_bomb(tmp_path / "bomb.png")
    write_image(tmp_path / "ok.png", size=(64, 64))
    if pil_limit == "lifted":  # some libraries set Image.MAX_IMAGE_PIXELS = None on import
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    usable, skipped = scan(tmp_path)
    assert [i.rel for i in usable] == ["ok.png"]
    [(rel, reason)] = skipped
    assert rel == "bomb.png" and "179-megapixel limit" in reason and "decompression-bomb" in reason
    assert discovery.MAX_IMAGE_PIXELS == 2 * 89_478_485  # Pillow's own hard limit at its defaults


def test_fifo_symlink_loops_and_non_utf8_names_are_skipped_never_hang(tmp_path):
    import os

    write_image(tmp_path / "ok.png", size=(64, 64))
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
    (tmp_path / "loop a.png").symlink_to("loop b.png")
    (tmp_path / "loop b.png").symlink_to("loop a.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..", target_is_directory=True)  # a folder loop: never walked
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    write_image(Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png")), size=(64, 64))  # Latin-1 name
    usable, skipped = scan(tmp_path)
    assert [i.rel for i in usable] == ["ok.png"]
    reasons = dict(skipped)
    assert set(reasons) == {"pipe.jpg", "loop a.png", "loop b.png", "dangling.png", "caf\\xe9.png"}
    assert "not a regular file" in reasons["pipe.jpg"]
    assert "symbolic links" in reasons["loop a.png"]
    assert "No such file" in reasons["dangling.png"]
    assert "not valid UTF-8" in reasons["caf\\xe9.png"]
    for rel in reasons:  # every name can be logged and written to a JSON manifest
        rel.encode("utf-8")


def test_unreadable_file_is_skipped_with_a_fix(tmp_path):
    """chmod 000 does not stop root, so as root the scan runs in a child without the
    capabilities that let root read anything (setpriv); as another user chmod is enough."""
    import os
    import shutil
    import subprocess
    import sys

    write_image(tmp_path / "ok.png", size=(64, 64))
    write_image(tmp_path / "locked.png", size=(64, 64)).chmod(0)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search"]
    code = ("import json, sys; from runner.data.discovery import scan; "
            "u, s = scan(sys.argv[1]); print(json.dumps([[i.rel for i in u], s]))")
    proc = subprocess.run(prefix + [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import json

    usable, skipped = json.loads(proc.stdout)
    assert usable == ["ok.png"]
    assert skipped == [["locked.png", "cannot read (Permission denied); make it readable (chmod a+r) or remove it"]]


def test_linked_folders_are_followed_each_real_folder_once(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_image(root / "own.png", size=(64, 64))
    write_image(elsewhere / "linked.png", size=(64, 64))
    (root / "more").symlink_to(elsewhere, target_is_directory=True)  # images kept in another folder
    (root / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder a second time
    (elsewhere / "back").symlink_to(root, target_is_directory=True)  # a loop through the link
    usable, skipped = scan(root)
    rels = [i.rel for i in usable]
    assert rels.count("own.png") == 1 and len(rels) == 2 and skipped == []
    assert {r for r in rels if r.endswith("linked.png")} <= {"again/linked.png", "more/linked.png"}


def test_an_xmp_only_orientation_is_read_as_the_decoder_applies_it(tmp_path):
    """A JPEG whose orientation is only in XMP: planned as the decoder (exif_transpose) turns it,
    not as stored (it was skipped in the cache stage as "changed since it was scanned")."""
    from PIL import Image, ImageOps

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    Image.new("RGB", (256, 192), (1, 2, 3)).save(tmp_path / "turned.jpg", "JPEG", xmp=xmp)
    [info], skipped = scan(tmp_path)
    decoded = ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg"))
    assert (info.width, info.height) == decoded.size == (192, 256) and skipped == []
