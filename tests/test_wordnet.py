"""WordNet ids in class names get their hypernyms, so `dog` finds neurons of any dog breed."""
from __future__ import annotations

from pathlib import Path

import pytest

import neuronindex
from neuronindex import wordnet
from neuronindex.data import open_source

needs_debian = pytest.mark.skipif(wordnet.database() is None, reason="Debian's wordnet-base is not installed")

CHIHUAHUA, BEAGLE, TABBY = "n02085620", "n02088364", "n02123045"


@needs_debian
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


@needs_debian
def test_folder_classes_get_wordnet_ancestors(breeds):
    images = open_source(str(breeds))
    assert images.leaf_classes == ["Chihuahua", "beagle", "tabby"]  # WordNet lemmas, ids kept in wnid
    assert images.classes["Chihuahua"].wnid == CHIHUAHUA
    assert images.ancestors("Chihuahua")[:2] == ["toy dog", "dog"]
    assert "dog" in images.ancestors("beagle") and "dog" not in images.ancestors("tabby")
    assert images.classes["dog"].wnid == "n02084071"


@needs_debian
def test_dog_finds_the_red_detector(breeds, tiny_loaded, tmp_path):
    from neuronindex.jobs.ingest import IngestParams, ingest

    ingest(tiny_loaded, str(breeds), "conv1", tmp_path, params=IngestParams(top_k=8), progress=False)
    with neuronindex.open(tmp_path) as idx:
        found = idx.search("dog conv1").rows()
        assert found and found[0]["key"] == "tiny_cnn/conv1/0" and found[0]["class_share"] == pytest.approx(1.0)
        assert "tiny_cnn/conv1/0" in [r["key"] for r in idx.search("carnivore")]
        assert "tiny_cnn/conv1/0" not in [r["key"] for r in idx.search("feline")]


def test_the_bundled_hierarchy_answers_without_debian(monkeypatch, tmp_path):
    """WordNet 3.0's chains, known by hand: the breeds under dog, the tabby under feline."""
    monkeypatch.setenv("NEURONINDEX_WORDNET", str(tmp_path / "absent"))
    assert wordnet.database() is None and wordnet.source() == "the bundled ImageNet-1k WordNet hierarchy"
    chain = [lemma for _, lemma in wordnet.hypernyms(CHIHUAHUA)]
    assert chain[:4] == ["toy dog", "dog", "canine", "carnivore"] and chain[-1] == "entity"
    assert "feline" in [lemma for _, lemma in wordnet.hypernyms(TABBY)]
    assert wordnet.lemma(BEAGLE) == "beagle" and wordnet.lemma("n01440764") == "tench"
    assert not wordnet.knows("n00000000") and wordnet.hypernyms("n00000000") == []
    text = wordnet.BUNDLE.read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in text  # the licence travels with the data


@needs_debian
def test_the_bundle_is_the_imagenet_1k_closure_of_debians_wordnet(tmp_path):
    """The shipped file is what write_bundle makes from Debian's WordNet and timm's list of the
    1,000 ILSVRC-2012 ids: every id, every hypernym up to entity, nothing else."""
    import os

    timm = pytest.importorskip("timm")
    ids = (Path(os.path.dirname(timm.__file__)) / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    assert len(set(ids)) == 1000
    made = tmp_path / "made.tsv"
    n = wordnet.write_bundle(ids, wordnet.database(), made)
    assert made.read_text() == wordnet.BUNDLE.read_text()
    rows = {line.split("\t")[0] for line in made.read_text().splitlines() if not line.startswith("#")}
    assert len(rows) == n and set(ids) <= rows


def test_indexes_adds_the_hierarchy_to_an_index_written_without_it(breeds, tiny_loaded, tmp_path, monkeypatch):
    """An index ingested where no WordNet was at hand (classes named by their ids, no ancestors):
    `neuronindex indexes` renames the classes, adds their hypernyms and rolls the shares up, so
    `dog` works; the class ids the images point at are kept."""
    from click.testing import CliRunner

    from neuronindex.jobs.ingest import IngestParams, ingest
    from neuronindex_cli.main import cli

    monkeypatch.setenv("NEURONINDEX_WORDNET", str(tmp_path / "absent"))
    monkeypatch.setattr(wordnet, "bundled", lambda: {})
    ingest(tiny_loaded, str(breeds), "conv1", tmp_path / "idx", params=IngestParams(top_k=8), progress=False)
    with neuronindex.open(tmp_path / "idx") as idx:
        before = {r["name"]: r["id"] for r in idx.sql("SELECT name, id FROM classes").rows()}
        assert set(before) == {CHIHUAHUA, BEAGLE, TABBY}
        with pytest.raises(Exception, match="unknown word 'dog'"):
            idx.search("dog conv1").rows()
    monkeypatch.undo()
    monkeypatch.setenv("NEURONINDEX_WORDNET", str(tmp_path / "absent"))
    result = CliRunner().invoke(cli, ["indexes", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 0, result.output
    assert "classes added or renamed" in result.output
    with neuronindex.open(tmp_path / "idx") as idx:
        after = {r["name"]: r["id"] for r in idx.sql("SELECT name, id FROM classes").rows()}
        assert after["Chihuahua"] == before[CHIHUAHUA] and after["tabby"] == before[TABBY]
        assert {"dog", "canine", "feline", "entity"} <= set(after)
        found = idx.search("dog conv1").rows()
        assert found and found[0]["key"] == "tiny_cnn/conv1/0" and found[0]["class_share"] == pytest.approx(1.0)
        assert "tiny_cnn/conv1/0" not in [r["key"] for r in idx.search("feline")]
