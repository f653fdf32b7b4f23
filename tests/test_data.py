"""Image sources: folders, hierarchy, manifests, flat folders, odd and broken files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neuronindex import wordnet
from neuronindex.data import load_image, open_source, survey
from neuronindex.errors import DataError


def test_nested_folders_form_a_hierarchy(tmp_path):
    for path in ["animals/dog/husky/a.png", "animals/dog/beagle/b.png", "animals/cat/c.png", "things/car/d.jpg"]:
        p = tmp_path / path
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(p)
    images = open_source(str(tmp_path))
    assert [r.label for r in images.images] == ["cat", "beagle", "husky", "car"]
    assert images.ancestors("husky") == ["dog", "animals"]
    assert images.ancestors("car") == ["things"]
    assert images.leaf_classes == ["beagle", "car", "cat", "husky"]


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    images = open_source(str(tmp_path))
    assert images.kind == "flat"
    assert all(r.label is None for r in images.images)


def test_manifest_with_parents_and_wordnet_ids(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,label,parent\nx.png,n02085620,n02084071\nx.png,n02085620,n02084071\n")
    images = open_source(str(tmp_path / "m.csv"))
    assert len(images.images) == 2
    # named by its WordNet lemma when WordNet is installed; the id stays in `wnid`
    name = "Chihuahua" if wordnet.database() else "n02085620"
    assert images.classes[name].wnid == "n02085620" and images.images[0].label == name
    assert images.ancestors(name)[0] == ("dog" if wordnet.database() else "n02084071")
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(DataError, match="header"):
        open_source(str(tmp_path / "bad.csv"))


def test_modes_and_exif_become_upright_rgb(tmp_path):
    Image.new("L", (4, 2), 128).save(tmp_path / "grey.png")
    Image.new("CMYK", (4, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    img = Image.new("RGB", (4, 2), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "grey.png").mode == "RGB"
    cmyk = np.asarray(load_image(tmp_path / "cmyk.jpg"))
    assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60
    assert np.asarray(load_image(tmp_path / "alpha.png"))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert load_image(tmp_path / "rotated.jpg").size == (2, 4)


def test_corrupt_files_are_reported_not_fatal(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "good.png")
    (tmp_path / "cls" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "cls" / "notes.xyz").write_text("?")
    report = survey(open_source(str(tmp_path)))
    assert report["images"] == 2
    reasons = {p["path"].rsplit("/", 1)[1]: p["reason"] for p in report["problems"]}
    assert "cannot decode" in reasons["broken.png"]
    assert "not an image" in reasons["notes.xyz"]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no images found"):
        open_source(str(tmp_path))
    with pytest.raises(DataError, match="torchvision has no dataset"):
        open_source("torchvision:CIFAR11")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="not a manifest"):
        open_source(str(tmp_path / "a.txt"))


def test_torchvision_dataset_without_download_says_how(tmp_path):
    with pytest.raises(DataError, match="--download"):
        from neuronindex.data import _torchvision_source

        _torchvision_source("torchvision:CIFAR10:test", download=False, root=str(tmp_path))


def test_bad_names_links_and_16_bit_images_are_recorded_or_read(tmp_path, tiny_loaded):
    """A file name that is not UTF-8, a dangling link and a link loop are each recorded with a
    reason (never a traceback), and counted; a 16-bit PNG is scaled to 8 bits, not clipped white."""
    import duckdb

    from neuronindex.jobs.ingest import IngestParams, ingest

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"ok{i}.png")
    with open(bytes(root) + b"/caf\xe9.png", "wb") as f:
        Image.new("RGB", (16, 16), (30, 200, 30)).save(f, format="PNG")
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    ramp = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # 0, 257, ..., 65535
    Image.fromarray(ramp).save(root / "sixteen.png")
    assert Image.open(root / "sixteen.png").mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(load_image(root / "sixteen.png"))[..., 0], np.arange(256).reshape(16, 16))
    report = survey(open_source(str(root)))
    reasons = {p["path"].rsplit("/", 1)[1]: p["reason"] for p in report["problems"]}
    assert reasons == {"caf\\xe9.png": "file name is not valid UTF-8; rename the file to index it",
                       "dangling.png": "broken symbolic link", "loop.png": "symbolic link loop"}
    assert report["images"] == 4
    ingest(tiny_loaded, str(root), "conv1", tmp_path / "index", params=IngestParams(top_k=2), progress=False)
    con = duckdb.connect(str(tmp_path / "index" / "index.duckdb"), read_only=True)
    assert con.execute("SELECT n_images, n_problems FROM datasets").fetchone() == (4, 3)


def test_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    from neuronindex import settings

    big = tmp_path / "big.png"
    Image.new("1", (12_000, 12_000)).save(big)  # 144 Mpx in a few KB
    assert big.stat().st_size < 100_000
    with pytest.raises(DataError, match="144 Mpx, more than the 89 Mpx limit"):
        load_image(big)
    monkeypatch.setitem(settings.BY_NAME, "max_pixels", settings.Setting("max_pixels", 200_000_000, "x"))
    assert load_image(big).size == (12_000, 12_000)
