"""Labels the way real datasets come: class in the file name, ImageNet ground-truth files, WordNet names."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import neuronindex
from neuronindex import data, wordnet
from neuronindex.data import open_source
from neuronindex.errors import DataError

TENCH, RETRIEVER, SHARK = "n01440764", "n02099601", "n01484850"
needs_wordnet = pytest.mark.skipif(wordnet.database() is None, reason="Debian's wordnet-base is not installed")


def flat_imagenet(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (10 * i, 20, 30)).save(root / name)
    return root


def test_flat_folder_with_imagenet_file_names_is_labelled(tmp_path):
    root = flat_imagenet(tmp_path / "val", [f"{TENCH}_tench.JPEG", f"{TENCH}_10.JPEG", f"{RETRIEVER}_golden_retriever.JPEG"])
    images = open_source(str(root))
    assert images.kind == "flat" and images.labels == "imagenet"
    assert [r.label for r in images.images] == ["tench", "tench", "golden retriever"]
    assert images.classes["golden retriever"].wnid == RETRIEVER
    assert open_source(str(root), labels="none").leaf_classes == []


def test_without_debian_wordnet_imagenet_ids_use_the_bundled_hierarchy(tmp_path, monkeypatch, capsys):
    """pip alone: ImageNet-1k ids are named and rolled up from the shipped hierarchy; an id outside
    it keeps the name its files carry, with one warning that says how to add it."""
    monkeypatch.setenv("NEURONINDEX_WORDNET", str(tmp_path / "absent"))
    monkeypatch.setattr(data, "_WARNED", set())
    other = "n09999999"  # not an ImageNet-1k class
    root = flat_imagenet(tmp_path / "val", [f"{TENCH}_10.JPEG", f"{SHARK}_great_white_shark.JPEG", f"{SHARK}_2.JPEG",
                                            f"{other}_mystery.JPEG"])
    images = open_source(str(root))
    open_source(str(root))
    assert images.leaf_classes == ["great white shark", "mystery", "tench"]
    assert images.ancestors("tench")[:2] == ["cyprinid", "cypriniform fish"] and "fish" in images.ancestors("tench")
    assert "shark" in images.ancestors("great white shark") and images.ancestors("mystery") == []
    err = capsys.readouterr().err
    assert err.count("warning: 1 WordNet ids (n09999999) are not in the bundled ImageNet-1k WordNet hierarchy") == 1


def test_regex_labels_and_their_errors(tmp_path):
    root = flat_imagenet(tmp_path / "f", ["cat.001.png", "cat.002.png", "dog.001.png", "readme.png"])
    images = open_source(str(root), labels=r"regex:^(?P<label>[a-z]+)\.\d+")
    assert [r.label for r in images.images] == ["cat", "cat", "dog", None]
    with pytest.raises(DataError, match="has no group"):
        open_source(str(root), labels="regex:cat")
    with pytest.raises(DataError, match="does not compile"):
        open_source(str(root), labels="regex:(")
    with pytest.raises(DataError, match="no file name .* matches"):
        open_source(str(root), labels="regex:^(x)")
    with pytest.raises(DataError, match="unknown --labels"):
        open_source(str(root), labels="bogus")
    with pytest.raises(DataError, match="no class sub-folders"):
        open_source(str(root), labels="folders")


def test_ground_truth_two_columns_with_class_numbers(tmp_path):
    """Caffe's val.txt: `name number`, numbers from 0 into the class list (synset_words.txt style)."""
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    root = flat_imagenet(tmp_path / "val", names)
    (tmp_path / "val.txt").write_text("\n".join(f"{n} {c}" for n, c in zip(names, (1, 0, 1))) + "\n")
    (tmp_path / "synsets.txt").write_text(f"{TENCH} tench, Tinca tinca\n{RETRIEVER} golden retriever\n")
    images = open_source(str(root), labels=str(tmp_path / "val.txt"), class_list=str(tmp_path / "synsets.txt"))
    assert [r.label for r in images.images] == ["golden retriever", "tench", "golden retriever"]
    with pytest.raises(DataError, match="--class-list"):
        open_source(str(root), labels=str(tmp_path / "val.txt"))


def test_ground_truth_kaggle_csv_and_one_label_per_line(tmp_path):
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2)]
    root = flat_imagenet(tmp_path / "val", names)
    (tmp_path / "LOC_val_solution.csv").write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000002,{TENCH} 1 2 3 4\nILSVRC2012_val_00000001,{SHARK} 5 6 7 8\n")
    images = open_source(str(root), labels=str(tmp_path / "LOC_val_solution.csv"))
    assert [images.classes[r.label].wnid for r in images.images] == [SHARK, TENCH]
    # the devkit's ground truth: one number per line, in file order, numbered from 1
    (tmp_path / "gt.txt").write_text("2\n1\n")
    (tmp_path / "classes.txt").write_text(f"{TENCH}\n{SHARK}\n")
    images = open_source(str(root), labels=str(tmp_path / "gt.txt"), class_list=str(tmp_path / "classes.txt"))
    assert [images.classes[r.label].wnid for r in images.images] == [SHARK, TENCH]
    (tmp_path / "short.txt").write_text("1\n")
    with pytest.raises(DataError, match="one line per image"):
        open_source(str(root), labels=str(tmp_path / "short.txt"), class_list=str(tmp_path / "classes.txt"))


def test_labels_only_for_folders(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("path,label\nx.png,a\n")
    with pytest.raises(DataError, match="carries its own labels"):
        open_source(str(tmp_path / "m.csv"), labels="imagenet")


@needs_wordnet
def test_class_names_are_searchable_by_lemma_phrase_and_id(tmp_path, tiny_loaded):
    from conftest import make_image
    from neuronindex.jobs.ingest import IngestParams, ingest

    rng = np.random.default_rng(0)
    root = tmp_path / "val"
    root.mkdir()
    for wnid, name, kind in ((TENCH, "tench", "green"), (RETRIEVER, "golden_retriever", "red"), (SHARK, "x", "blue")):
        for i in range(6):
            Image.fromarray(make_image(kind, rng)).save(root / f"{wnid}_{name}_{i}.png")
    ingest(tiny_loaded, str(root), "conv1", tmp_path / "index", params=IngestParams(top_k=6), progress=False)
    with neuronindex.open(tmp_path / "index") as idx:
        assert idx.sql("SELECT labels FROM datasets").rows() == [{"labels": "imagenet"}]
        tops = {r["top_class"] for r in idx.sql("SELECT top_class FROM neuron_view WHERE top_class IS NOT NULL")}
        assert tops <= {"tench", "golden retriever", "great white shark"} and tops
        phrase = idx.search("golden retriever conv1").rows()
        assert phrase and phrase[0]["key"] == "tiny_cnn/conv1/0"  # the red detector's images are the red class
        for query in ('class:"golden retriever"', f"{RETRIEVER} conv1", '"golden retriever"'):
            assert [r["key"] for r in idx.search(query)] == [r["key"] for r in phrase], query
        assert idx.search("tench").rows() and idx.search("dog").rows()  # and the WordNet ancestors
