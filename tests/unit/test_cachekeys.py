"""Cache keys: every input that changes the cached bytes changes the key, nothing else does."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from runner import cachekeys
from runner.atomic import atomic_write_bytes, atomic_write_json
from runner.cachekeys import (
    EncoderIdentity,
    component_fingerprint,
    entry_path,
    latent_key,
    text_key,
)
from runner.data.transforms import plan_crop
from runner.stages.cache import crop_plan_dict

BASE_ID = EncoderIdentity(model="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", revision="main",
                          fingerprint="0" * 32, dtype="bfloat16")
BASE_TEXT = {"encoder": BASE_ID, "max_tokens": 300, "caption": "a photo of a cat"}


def _identity(**changes) -> EncoderIdentity:
    return dataclasses.replace(BASE_ID, **changes)


# ----------------------------------------------------------------------------- text_key

def test_text_key_is_stable_and_hex() -> None:
    a = text_key(**BASE_TEXT)
    b = text_key(EncoderIdentity(**dataclasses.asdict(BASE_ID)), 300, "a photo of a cat")
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0


@pytest.mark.parametrize("field, value", [
    ("model", "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"),
    ("revision", "refs/pr/1"),
    ("fingerprint", "1" * 32),
    ("dtype", "float32"),
    ("max_tokens", 120),
    ("caption", "a photo of a cat."),
    ("caption", "A photo of a cat"),
    ("caption", ""),
])
def test_text_key_changes_with_each_field(field: str, value) -> None:
    kwargs = dict(BASE_TEXT)
    if field in ("max_tokens", "caption"):
        kwargs[field] = value
    else:
        kwargs["encoder"] = _identity(**{field: value})
    assert text_key(**kwargs) != text_key(**BASE_TEXT)


def test_text_and_latent_keys_live_in_different_namespaces() -> None:
    # Same identity and a "caption" equal to the digest must not collide with a latent key.
    assert text_key(BASE_ID, 300, "abc") != latent_key(BASE_ID, "abc", {})


# ----------------------------------------------------------------------------- latent_key

SOURCE_DIGEST = "ab" * 32


def _plan(width: int = 640, height: int = 480, resolution: float = 256, crop_style: str = "center",
          seed_key: str = "img.png", **kw) -> dict:
    return crop_plan_dict(plan_crop(width, height, resolution=resolution, resolution_type="pixel", crop=True,
                                    crop_aspect=kw.pop("crop_aspect", "square"), crop_style=crop_style,
                                    seed_key=seed_key, **kw))


BASE_PLAN = _plan()


def _modified(**fields) -> dict:
    plan = dict(BASE_PLAN)
    plan.update(fields)
    return plan


def test_latent_key_stable_for_equal_inputs() -> None:
    assert latent_key(BASE_ID, SOURCE_DIGEST, BASE_PLAN) == latent_key(_identity(), SOURCE_DIGEST, _plan())


def test_crop_plans_used_below_really_differ() -> None:
    """Guard for the table below: each alternative plan differs from the base in that field."""
    assert _plan(resolution=320)["target_size"] != BASE_PLAN["target_size"]
    assert _plan(crop_style="corner")["crop_box"] != BASE_PLAN["crop_box"]
    assert _plan(crop_style="corner")["target_size"] == BASE_PLAN["target_size"]
    down = _plan(maximum_image_size=400, target_downsample_size=300)
    assert down["downsample_size"] is not None and BASE_PLAN["downsample_size"] is None


@pytest.mark.parametrize("label, vae, digest, plan", [
    ("vae model", _identity(model="madebyollin/sdxl-vae-fp16-fix"), SOURCE_DIGEST, BASE_PLAN),
    ("vae revision", _identity(revision="v2"), SOURCE_DIGEST, BASE_PLAN),
    ("vae fingerprint", _identity(fingerprint="f" * 32), SOURCE_DIGEST, BASE_PLAN),
    ("vae dtype", _identity(dtype="float32"), SOURCE_DIGEST, BASE_PLAN),
    ("source digest", BASE_ID, "cd" * 32, BASE_PLAN),
    ("resolution -> target_size", BASE_ID, SOURCE_DIGEST, _plan(resolution=320)),
    ("crop_box offset (corner vs center)", BASE_ID, SOURCE_DIGEST, _plan(crop_style="corner")),
    ("crop_box offset by one pixel", BASE_ID, SOURCE_DIGEST,
     _modified(crop_box=[BASE_PLAN["crop_box"][0] + 1, BASE_PLAN["crop_box"][1],
                         BASE_PLAN["crop_box"][2] + 1, BASE_PLAN["crop_box"][3]])),
    ("resize_size", BASE_ID, SOURCE_DIGEST, _modified(resize_size=[BASE_PLAN["resize_size"][0] + 2,
                                                                   BASE_PLAN["resize_size"][1]])),
    ("downsample_size", BASE_ID, SOURCE_DIGEST, _modified(downsample_size=[320, 240])),
    ("downsample via plan_crop", BASE_ID, SOURCE_DIGEST, _plan(maximum_image_size=400, target_downsample_size=300)),
    ("target_size only", BASE_ID, SOURCE_DIGEST, _modified(target_size=[256, 192])),
    ("source_size", BASE_ID, SOURCE_DIGEST, _modified(source_size=[641, 480])),
])
def test_latent_key_changes_with_each_field(label: str, vae, digest: str, plan: dict) -> None:
    assert latent_key(vae, digest, plan) != latent_key(BASE_ID, SOURCE_DIGEST, BASE_PLAN), label


def test_latent_key_independent_of_dict_order_and_tuple_vs_list() -> None:
    reordered = dict(reversed(list(BASE_PLAN.items())))
    as_tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in BASE_PLAN.items()}
    base = latent_key(BASE_ID, SOURCE_DIGEST, BASE_PLAN)
    assert latent_key(BASE_ID, SOURCE_DIGEST, reordered) == base
    assert latent_key(BASE_ID, SOURCE_DIGEST, as_tuples) == base


# ----------------------------------------------------------------------------- entry_path

@pytest.mark.parametrize("key", ["ab" + "0" * 62, "00" + "f" * 62, text_key(**BASE_TEXT)])
def test_entry_path_fan_out(tmp_path: Path, key: str) -> None:
    path = entry_path(tmp_path, key)
    assert path == tmp_path / key[:2] / f"{key}.safetensors"
    assert path.parent.parent == tmp_path
    assert path.parent.name == key[:2]


def test_entry_path_spreads_keys_over_directories(tmp_path: Path) -> None:
    keys = [text_key(BASE_ID, 300, f"caption {i}") for i in range(200)]
    dirs = {entry_path(tmp_path, k).parent for k in keys}
    assert len(dirs) > 50  # 256 possible; 200 random keys land in well over 50


# ----------------------------------------------------------------------------- component_fingerprint

def _make_component(root: Path) -> Path:
    comp = root / "vae"
    comp.mkdir(parents=True)
    (comp / "config.json").write_text('{"latent_channels": 4, "scaling_factor": 0.13025}')
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 4096)
    return comp


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _rewrite_config(comp: Path) -> None:
    (comp / "config.json").write_text('{"latent_channels": 4, "scaling_factor": 0.18215}')


def _rewrite_weights_other_size(comp: Path) -> None:
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 4097)


def _rewrite_weights_same_size(comp: Path) -> None:
    weights = comp / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x02" * 4096)
    _bump_mtime(weights)  # make sure a coarse-mtime filesystem still records a new write


def _touch_weights(comp: Path) -> None:
    _bump_mtime(comp / "diffusion_pytorch_model.safetensors")


def _add_file(comp: Path) -> None:
    (comp / "extra.bin").write_bytes(b"x")


def _rename_weights(comp: Path) -> None:
    (comp / "diffusion_pytorch_model.safetensors").rename(comp / "model.safetensors")


@pytest.mark.parametrize("change", [_rewrite_config, _rewrite_weights_other_size, _rewrite_weights_same_size,
                                    _touch_weights, _add_file, _rename_weights])
def test_component_fingerprint_changes(tmp_path: Path, change) -> None:
    comp = _make_component(tmp_path)
    before = component_fingerprint(comp)
    change(comp)
    assert component_fingerprint(comp) != before


def test_component_fingerprint_config_content_not_mtime(tmp_path: Path) -> None:
    comp = _make_component(tmp_path)
    before = component_fingerprint(comp)
    _bump_mtime(comp / "config.json")  # same JSON bytes: content is what counts
    assert component_fingerprint(comp) == before


def test_component_fingerprint_stable_on_reread(tmp_path: Path) -> None:
    comp = _make_component(tmp_path)
    weights = comp / "diffusion_pytorch_model.safetensors"
    stat_before = weights.stat()
    first = component_fingerprint(comp)
    assert component_fingerprint(comp) == first
    assert len(first) == 32
    # Fingerprinting must not touch the files it reads.
    assert weights.stat().st_mtime_ns == stat_before.st_mtime_ns


def test_component_fingerprint_includes_snapshot_commit(tmp_path: Path) -> None:
    a = _make_component(tmp_path / "snapshots" / ("a" * 40))
    b = tmp_path / "snapshots" / ("b" * 40) / "vae"
    b.mkdir(parents=True)
    for f in a.iterdir():
        (b / f.name).write_bytes(f.read_bytes())
        st = f.stat()
        os.utime(b / f.name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert component_fingerprint(a) != component_fingerprint(b)


def test_component_fingerprint_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model component folder not found"):
        component_fingerprint(tmp_path / "nope")


# ----------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("first, second", [(b"old content", b"new"), (b"", b"\x00" * 10_000), (b"x" * 10, b"")])
def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path, first: bytes, second: bytes) -> None:
    target = tmp_path / "sub" / "dir" / "entry.safetensors"
    atomic_write_bytes(target, first)
    assert target.read_bytes() == first
    atomic_write_bytes(target, second)
    assert target.read_bytes() == second
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry.safetensors"]


def test_atomic_write_json_roundtrip(tmp_path: Path) -> None:
    import json

    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_cache_format_is_part_of_key(monkeypatch) -> None:
    before = text_key(**BASE_TEXT)
    monkeypatch.setattr(cachekeys, "CACHE_FORMAT", cachekeys.CACHE_FORMAT + 1)
    assert text_key(**BASE_TEXT) != before
