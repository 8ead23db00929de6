"""Cache keys: every input that changes the cached bytes changes the key, nothing else does."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cache import keys as cachekeys
from runner.files import atomic_write_bytes, atomic_write_json
from runner.cache.keys import (
    EncoderIdentity,
    component_fingerprint,
    entry_path,
    latent_key,
    text_key,
)
from runner.cache.stage import crop_plan_dict
from runner.data.discovery import DigestMemo
from runner.files import file_digest
from runner.data.transforms import plan_crop
from tests.fakehub import FakeHub, Repo, client_env, git_blob_id

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


@pytest.mark.parametrize("changes", [
    {"model": "/models/pixart-sigma"},           # the same files under a local path
    {"model": "someone/pixart-sigma-mirror"},    # ... or another repo
    {"revision": "1e4b2d7a" * 5},                # the commit that "main" pointed to
])
def test_keys_ignore_where_the_weights_came_from(changes) -> None:
    """Only content counts: the same fingerprint under another name, path or revision is the same encoder."""
    moved = _identity(**changes)
    assert text_key(moved, 300, "a photo of a cat") == text_key(**BASE_TEXT)
    assert latent_key(moved, SOURCE_DIGEST, BASE_PLAN) == latent_key(BASE_ID, SOURCE_DIGEST, BASE_PLAN)


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

CONFIG = b'{"latent_channels": 4, "scaling_factor": 0.13025}'
WEIGHTS = bytes(range(256)) * 16


def _make_component(root: Path, config: bytes = CONFIG, weights: bytes = WEIGHTS) -> Path:
    comp = root / "vae"
    comp.mkdir(parents=True)
    (comp / "config.json").write_bytes(config)
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return comp


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _one_byte(data: bytes, at: int = 1000) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def _rewrite_config(comp: Path) -> None:
    (comp / "config.json").write_bytes(CONFIG.replace(b"0.13025", b"0.18215"))


def _rewrite_weights_other_size(comp: Path) -> None:
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(WEIGHTS + b"\x00")


def _change_one_weights_byte(comp: Path) -> None:
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(_one_byte(WEIGHTS))


def _add_file(comp: Path) -> None:
    (comp / "extra.bin").write_bytes(b"x")


def _rename_weights(comp: Path) -> None:
    (comp / "diffusion_pytorch_model.safetensors").rename(comp / "model.safetensors")


@pytest.mark.parametrize("change", [_rewrite_config, _rewrite_weights_other_size, _change_one_weights_byte,
                                    _add_file, _rename_weights])
def test_component_fingerprint_changes_with_content(tmp_path: Path, change) -> None:
    comp = _make_component(tmp_path)
    before = component_fingerprint(comp)
    change(comp)
    assert component_fingerprint(comp) != before


def test_component_fingerprint_ignores_mtimes(tmp_path: Path) -> None:
    comp = _make_component(tmp_path)
    before = component_fingerprint(comp)
    for f in comp.iterdir():
        _bump_mtime(f)
    assert component_fingerprint(comp) == before


def test_component_fingerprint_same_bytes_in_another_folder(tmp_path: Path) -> None:
    """A second download of the same files (new folder, new mtimes) is the same component."""
    a = _make_component(tmp_path / "first")
    b = _make_component(tmp_path / "second" / "deeper")
    for f in b.iterdir():
        _bump_mtime(f)
    assert component_fingerprint(a) == component_fingerprint(b)
    # hf download --local-dir bookkeeping (times, etags of this download) is not content.
    meta = b / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text("0123abcd\n1700000000.123\n")
    assert component_fingerprint(a) == component_fingerprint(b)


def test_component_fingerprint_is_a_function_of_names_and_sha256s(tmp_path: Path) -> None:
    comp = _make_component(tmp_path)
    listing = "".join(f"{name}\0{hashlib.sha256(data).hexdigest()}\n" for name, data in
                      sorted({"config.json": CONFIG, "diffusion_pytorch_model.safetensors": WEIGHTS}.items()))
    assert component_fingerprint(comp) == hashlib.sha256(listing.encode()).hexdigest()[:32]


def test_component_fingerprint_hashes_local_weights_once_with_the_memo(tmp_path: Path) -> None:
    """With the digest memo a rerun does not read the weights again: it trusts path, size and
    mtime (here, bytes changed behind its back with the mtime put back are not noticed, which
    shows it did not read them), and a real rewrite (new mtime) is hashed again."""
    comp = _make_component(tmp_path / "model")
    weights = comp / "diffusion_pytorch_model.safetensors"
    memo_path = tmp_path / "cache" / "digests.json"
    memo = DigestMemo(memo_path)
    first = component_fingerprint(comp, memo.digest)
    assert first == component_fingerprint(comp)
    memo.save()

    st = weights.stat()
    weights.write_bytes(_one_byte(WEIGHTS))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert component_fingerprint(comp, DigestMemo(memo_path).digest) == first  # remembered, not re-read
    assert component_fingerprint(comp) != first

    _bump_mtime(weights)  # what any real write does
    assert component_fingerprint(comp, DigestMemo(memo_path).digest) == component_fingerprint(comp) != first


def test_component_fingerprint_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model component folder not found"):
        component_fingerprint(tmp_path / "nope")


# ----------------------------------------------------------------------------- Hub snapshots

def _snapshot_download(hub: FakeHub, root: Path) -> Path:
    """huggingface_hub's own snapshot_download, in a subprocess: it reads HF_ENDPOINT and the
    offline switch when imported."""
    code = ("import sys; from huggingface_hub import snapshot_download; "
            "print(snapshot_download('owner/model', revision='main', cache_dir=sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(root / "hub")], capture_output=True, text=True,
                          env=client_env(root, endpoint=hub.url, HF_HUB_ETAG_TIMEOUT="5"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_hub_snapshot_fingerprint_is_content_identity(tmp_path: Path) -> None:
    """Weights are LFS files, answered as the Hub does: the git ETag plus X-Linked-Etag /
    X-Linked-Size with the object's sha256, which the client uses to name the blob in its cache;
    small files are plain git blobs (ETag = git blob id)."""
    files = {"vae/config.json": CONFIG, "vae/diffusion_pytorch_model.safetensors": WEIGHTS}
    with FakeHub(models={"owner/model": Repo(files, lfs={"vae/diffusion_pytorch_model.safetensors"})}) as hub:
        first = _snapshot_download(hub, tmp_path / "pod-1")
        again = _snapshot_download(hub, tmp_path / "pod-2")  # a new pod downloads the same revision
        hub.repos["model", "owner/model"].files["vae/diffusion_pytorch_model.safetensors"] = _one_byte(WEIGHTS)
        changed = _snapshot_download(hub, tmp_path / "pod-3")
    weight_gets = [p for p in hub.file_gets() if p.endswith("/vae/diffusion_pytorch_model.safetensors")]
    assert len(weight_gets) == 3  # three real downloads
    weights = first / "vae" / "diffusion_pytorch_model.safetensors"
    assert weights.is_symlink() and weights.resolve().parent.name == "blobs"
    assert weights.resolve().name == hashlib.sha256(WEIGHTS).hexdigest()

    hashed: list[str] = []

    def counting_digest(path: Path) -> str:
        hashed.append(Path(path).name)
        return file_digest(path)

    fp = component_fingerprint(first / "vae", counting_digest)
    # The weights' sha256 is the blob's name: only the small git file was read.
    assert hashed == [git_blob_id(CONFIG)]
    assert component_fingerprint(again / "vae") == fp
    # ... and equals a plain copy of the same bytes, e.g. a folder made with hf download --local-dir.
    assert component_fingerprint(_make_component(tmp_path / "local")) == fp
    assert component_fingerprint(changed / "vae") != fp


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
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_cache_format_is_part_of_key(monkeypatch) -> None:
    before = text_key(**BASE_TEXT)
    monkeypatch.setattr(cachekeys, "CACHE_FORMAT", cachekeys.CACHE_FORMAT + 1)
    assert text_key(**BASE_TEXT) != before
