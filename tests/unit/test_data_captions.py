"""runner.data.captions: filename / textfile / instanceprompt strategies."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.data import DatasetError
from runner.data.captions import CaptionError, caption_for, caption_from_filename, decode_caption_bytes
from runner.data.discovery import ImageInfo


@pytest.mark.parametrize("stem,expected", [
    ("a cat", "a cat"),
    ("a_cat_on_a_mat", "a cat on a mat"),
    ("a cat (2)", "a cat"),
    ("a cat(12)", "a cat"),
    ("a_cat_2", "a cat"),
    ("a-cat-17", "a-cat"),
    ("dog__003", "dog"),
    ("route 66", "route 66"),          # no separator before the digits: kept
    ("route66", "route66"),
    ("  lots   of    space  ", "lots of space"),
    ("__leading_and_trailing__", "leading and trailing"),
    ("2024", "2024"),
    ("_2", "2"),                       # would be empty: keep the digits
    ("photo (2)_3", "photo (2)"),      # only one trailing counter is dropped
    ("a cat (two)", "a cat (two)"),
    ("an astronaut in a space suit", "an astronaut in a space suit"),
])
def test_caption_from_filename(stem, expected):
    assert caption_from_filename(stem) == expected


@pytest.mark.parametrize("name,expected", [
    ("a_ginger_cat.png", "a ginger cat"),
    ("sub/a cup of coffee (3).JPG", "a cup of coffee"),
    ("x.y_z.webp", "x.y z"),
])
def test_filename_strategy_with_path_and_info(tmp_path, name, expected):
    p = tmp_path / name
    info = ImageInfo(path=p, rel=name, width=1, height=1, size_bytes=1, mtime_ns=0)
    assert caption_for(p, tmp_path, "filename", None) == expected
    assert caption_for(info, tmp_path, "filename", None) == expected
    assert caption_for(name, tmp_path, "filename", None) == expected  # relative to root


@pytest.mark.parametrize("content,expected", [
    ("a red car", "a red car"),
    ("  a red car  \n", "a red car"),
    ("\n\n  first line \nsecond line\n", "first line"),
    ("\ufeffwith a bom", "with a bom"),
    ("tabs\tand   spaces", "tabs and spaces"),
    ("unicode: café ☕", "unicode: café ☕"),
])
def test_textfile_strategy(tmp_path, content, expected):
    img = tmp_path / "sub" / "pic.jpg"
    img.parent.mkdir()
    img.write_bytes(b"")
    (tmp_path / "sub" / "pic.txt").write_text(content, encoding="utf-8")
    assert caption_for(img, tmp_path, "textfile", None) == expected


@pytest.mark.parametrize("setup,match", [
    ("missing", r"sub/pic\.jpg: no caption file; captionStrategy textfile expects sub/pic\.txt"),
    ("empty", r"sub/pic\.jpg: caption file sub/pic\.txt is empty"),
    ("blank", r"sub/pic\.jpg: caption file sub/pic\.txt is empty"),
    ("binary", r"sub/pic\.jpg: caption file sub/pic\.txt is not UTF-8 text; re-save it as UTF-8"),
    ("utf16-no-bom", r"sub/pic\.jpg: caption file sub/pic\.txt contains NUL bytes .*; re-save it as UTF-8"),
    ("dir", r"sub/pic\.txt is a directory"),
    ("fifo", r"sub/pic\.txt is not a regular file"),  # reading a FIFO would block forever
    ("loop", r"cannot read caption file sub/pic\.txt \(Too many levels of symbolic links\)"),
])
def test_textfile_errors_name_image_and_expected_path(tmp_path, setup, match):
    img = tmp_path / "sub" / "pic.jpg"
    img.parent.mkdir()
    img.write_bytes(b"")
    txt = tmp_path / "sub" / "pic.txt"
    if setup == "empty":
        txt.write_text("")
    elif setup == "blank":
        txt.write_text("  \n\t\n")
    elif setup == "binary":
        txt.write_bytes(b"\xc3\x28 not utf-8")
    elif setup == "utf16-no-bom":
        txt.write_bytes("a cat".encode("utf-16-le"))
    elif setup == "dir":
        txt.mkdir()
    elif setup == "fifo":
        import os

        os.mkfifo(txt)
    elif setup == "loop":
        txt.symlink_to("pic.txt")
    with pytest.raises(CaptionError, match=match) as exc:
        caption_for(img, tmp_path, "textfile", None)
    assert isinstance(exc.value, DatasetError)
    assert "sub/pic.jpg" not in exc.value.reason


@pytest.mark.parametrize("data,expected", [
    (b"a cat", "a cat"),
    (b"\xef\xbb\xbfa cat", "a cat"),                                 # UTF-8 with BOM
    ("caf\u00e9 \u2615".encode("utf-8"), "caf\u00e9 \u2615"),
    ("\ufeffa caf\u00e9".encode("utf-16-le"), "a caf\u00e9"),          # UTF-16LE with BOM
    ("\ufeffa caf\u00e9".encode("utf-16-be"), "a caf\u00e9"),          # UTF-16BE with BOM
    ("a cat".encode("utf-16"), "a cat"),                               # native order, BOM
    (b"", ""),
])
def test_decode_caption_bytes(data, expected):
    assert decode_caption_bytes(data) == expected


@pytest.mark.parametrize("data,match", [
    ("a cat".encode("utf-16-le"), "contains NUL bytes.*re-save it as UTF-8"),   # no BOM
    ("a cat".encode("utf-16-be"), "contains NUL bytes.*re-save it as UTF-8"),
    (b"a\x00cat", "contains NUL bytes.*re-save it as UTF-8"),
    ("\ufeffa\x00cat".encode("utf-16-le"), "contains NUL bytes"),
    (b"\xc3\x28", "is not UTF-8 text; re-save it as UTF-8"),
    (b"\xff\xfe\x00\xd8", "is not valid UTF-16 text.*re-save it as UTF-8"),  # lone surrogate
])
def test_decode_caption_bytes_refuses(data, match):
    with pytest.raises(ValueError, match=match):
        decode_caption_bytes(data)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le-bom", "utf-8-sig"])
def test_textfile_strategy_reads_bom_encodings(tmp_path, encoding):
    img = tmp_path / "pic.jpg"
    img.write_bytes(b"")
    data = ("\ufeff" + "a caf\u00e9\nsecond").encode("utf-16-le") if encoding == "utf-16-le-bom" \
        else "a caf\u00e9\nsecond".encode(encoding)
    (tmp_path / "pic.txt").write_bytes(data)
    assert caption_for(img, tmp_path, "textfile", None) == "a caf\u00e9"


def test_textfile_other_extension_sibling_not_used(tmp_path):
    img = tmp_path / "pic.png"
    img.write_bytes(b"")
    (tmp_path / "pic.png.txt").write_text("wrong")
    (tmp_path / "pic.caption").write_text("wrong")
    with pytest.raises(CaptionError):
        caption_for(img, tmp_path, "textfile", None)


@pytest.mark.parametrize("prompt,expected", [("a photo of sks dog", "a photo of sks dog"),
                                             ("  padded  ", "padded")])
def test_instanceprompt(tmp_path, prompt, expected):
    assert caption_for(tmp_path / "whatever_3.png", tmp_path, "instanceprompt", prompt) == expected


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_instanceprompt_missing(tmp_path, prompt):
    with pytest.raises(CaptionError, match="instancePrompt"):
        caption_for(tmp_path / "x.png", tmp_path, "instanceprompt", prompt)


def test_unknown_strategy(tmp_path):
    with pytest.raises(ValueError, match="captionStrategy"):
        caption_for(Path("x.png"), tmp_path, "blip", None)
