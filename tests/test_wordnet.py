"""WordNet ids in class names get their hypernyms, so `dog` finds neurons of any dog breed."""
from __future__ import annotations

import pytest

import neuronindex
from neuronindex import wordnet
from neuronindex.data import open_source

pytestmark = pytest.mark.skipif(wordnet.database() is None, reason="Debian's wordnet-base is not installed")

CHIHUAHUA, BEAGLE, TABBY = "n02085620", "n02088364", "n02123045"


def test_hypernym_chain():
    chain = [lemma for _, lemma in wordnet.hypernyms(CHIHUAHUA)]
    assert chain[:4] == ["toy dog", "dog", "canine", "carnivore"] and chain[-1] == "entity"
    assert "feline" in [lemma for _, lemma in wordnet.hypernyms(TABBY)]


@pytest.fixture(scope="module")
def breeds(tmp_path_factory):
    from conftest import write_folder

    root = tmp_path_factory.mktemp("wn")
    for wnid, colour in ((CHIHUAHUA, "red"), (BEAGLE, "red"), (TABBY, "blue")):
        write_folder(root / "tmp", per_class=8, kinds=(colour,), seed=hash(wnid) % 1000)
        (root / "tmp" / colour).rename(root / wnid)
    return root


def test_folder_classes_get_wordnet_ancestors(breeds):
    images = open_source(str(breeds))
    assert images.leaf_classes == ["Chihuahua", "beagle", "tabby"]  # WordNet lemmas, ids kept in wnid
    assert images.classes["Chihuahua"].wnid == CHIHUAHUA
    assert images.ancestors("Chihuahua")[:2] == ["toy dog", "dog"]
    assert "dog" in images.ancestors("beagle") and "dog" not in images.ancestors("tabby")
    assert images.classes["dog"].wnid == "n02084071"


def test_dog_finds_the_red_detector(breeds, tiny_loaded, tmp_path):
    from neuronindex.ingest import IngestParams, ingest

    ingest(tiny_loaded, str(breeds), "conv1", tmp_path, params=IngestParams(top_k=8), progress=False)
    with neuronindex.open(tmp_path) as idx:
        found = idx.search("dog conv1").rows()
        assert found and found[0]["key"] == "tiny_cnn/conv1/0" and found[0]["class_share"] == pytest.approx(1.0)
        assert "tiny_cnn/conv1/0" in [r["key"] for r in idx.search("carnivore")]
        assert "tiny_cnn/conv1/0" not in [r["key"] for r in idx.search("feline")]
