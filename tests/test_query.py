"""Query layer: the search language on a fixture index with known answers, guarded SQL, export."""
from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import neuronindex
from neuronindex.errors import QueryError, QueryTimeout
from neuronindex_cli.main import cli


@pytest.fixture(scope="module")
def index_dir(hierarchy_index):
    return hierarchy_index


@pytest.fixture(scope="module")
def idx(index_dir):
    with neuronindex.open(index_dir) as index:
        yield index


def keys(result):
    return [r["key"] for r in result]


def truth(idx, where, order="id"):
    return keys(idx.sql(f"SELECT key FROM neuron_view WHERE {where} ORDER BY {order}"))


def _search_tables_in_sync(index) -> None:
    with neuronindex.open(index) as i:
        assert i.sql("SELECT * FROM neuron_search ORDER BY id").rows() == i.sql("SELECT * FROM neuron_view ORDER BY id").rows()
        assert sorted(tuple(r.values()) for r in i.sql("SELECT * FROM class_search").rows()) == sorted(
            tuple(r.values()) for r in i.sql("SELECT class_id, neuron_id, share, rank FROM neuron_classes").rows())


def test_search_tables_follow_every_write(index_dir, tmp_path):
    """Searches scan materialised copies (neuron_search, class_search); every write refreshes them."""
    import shutil

    from neuronindex.jobs.recompute import recompute

    _search_tables_in_sync(index_dir)
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy)
    with neuronindex.open(copy) as i:
        before = i.sql("SELECT sum(class_m) AS m FROM neuron_search").rows()[0]["m"]
    recompute(copy, progress=False, class_threshold=0.5)
    with neuronindex.open(copy) as i:
        after = i.sql("SELECT sum(class_m) AS m FROM neuron_search").rows()[0]["m"]
    assert after < before  # fewer classes reach half the weight than all of it
    _search_tables_in_sync(copy)


def test_red_conv1(idx):
    assert keys(idx.search("red conv1")) == truth(idx, "layer = 'conv1' AND color_name = 'red' AND color_index >= 0.4",
                                                  "color_index DESC, id")
    assert keys(idx.search("red-selective conv1 neurons")) == keys(idx.search("red conv1"))
    # the red detector's NF is flat red: eq. 2 has no component (alpha NULL); mean chroma finds it, when asked
    assert "tiny_cnn/conv1/0" not in keys(idx.search("red conv1"))
    found = keys(idx.search("red conv1 chroma>0.3"))
    assert found[0] == "tiny_cnn/conv1/0"
    assert found == truth(idx, "layer = 'conv1' AND color_name = 'red' AND mean_chroma > 0.3", "mean_chroma DESC, id")


def test_ancestor_class_words_cover_their_leaves(idx):
    # like "dog layer3": `cool` is the parent of green and blue
    found = idx.search("cool conv2").rows()
    assert found and all(r["layer"] == "conv2" for r in found)
    expected = truth(idx, "layer = 'conv2' AND id IN (SELECT neuron_id FROM neuron_classes nc JOIN classes c "
                          "ON c.id = nc.class_id WHERE c.name = 'cool' AND (nc.rank = 1 OR nc.share >= 0.5))")
    assert sorted(keys(found)) == sorted(expected)
    assert [r["class_share"] for r in found] == sorted((r["class_share"] for r in found), reverse=True)


def test_class_and_gamma(idx):
    found = idx.search("class:red gamma>=0.6").rows()
    assert "tiny_cnn/conv1/0" in keys(found)
    assert all(r["class_index"] >= 0.6 for r in found)


def test_colour_comparison_sort_limit(idx):
    found = idx.search("color:red alpha>0.5 sort:-alpha limit:2").rows()
    assert 1 <= len(found) <= 2 and found[0]["key"] == truth(
        idx, "color_name = 'red' AND color_index > 0.5", "color_index DESC, id")[0]
    assert [r["color_index"] for r in found] == sorted((r["color_index"] for r in found), reverse=True)


def test_dead_in_a_layer(idx):
    assert keys(idx.search("dead layer:conv1")) == ["tiny_cnn/conv1/2"]


def test_csi_and_model(idx):
    found = idx.search("csi>0.3 model:tiny_cnn")
    assert keys(found) == truth(idx, "csi > 0.3", "csi DESC, id")
    assert "tiny_cnn/conv1/0" in keys(found)


def test_unknown_words_suggest(idx):
    with pytest.raises(QueryError, match=r"unknown word 'conv3' \(did you mean conv2, conv1"):
        idx.search("red conv3")
    with pytest.raises(QueryError, match="did you mean red"):
        idx.search("redd")
    with pytest.raises(QueryError, match="unknown field 'alph'"):
        idx.search("alph>0.3")


def test_explain_is_parameterised(idx):
    sql, params = idx.explain("class:red alpha>0.5")
    assert "red" not in sql and "0.5" not in sql
    red_id = idx.sql("SELECT id FROM classes WHERE name = 'red'")[0]["id"]
    assert red_id in params and 0.5 in params


def test_injection_attempts_are_only_data(idx, index_dir):
    before = hashlib.sha256((index_dir / "index.duckdb").read_bytes()).hexdigest()
    for text in ["class:\"red'); DROP TABLE neurons; --\"", "layer:conv1' OR '1'='1", "red; DELETE FROM neurons"]:
        with pytest.raises(QueryError):
            idx.search(text)
    assert hashlib.sha256((index_dir / "index.duckdb").read_bytes()).hexdigest() == before


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_any_text_gives_results_or_a_query_error(idx, text):
    """Any text answers with the rows its own compiled SQL returns (at most the search limit, each
    a stored unit), or fails with a one-line QueryError; never another exception."""
    try:
        result = idx.search(text)
    except QueryError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    sql, params = idx.explain(text)
    rows = result.rows()
    assert rows == idx.query(sql, params).rows()
    assert len(rows) <= idx.settings.search_limit
    keys = {r["key"] for r in idx.query("SELECT key FROM neurons").rows()}
    assert all(r["key"] in keys for r in rows)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["red", "conv1", "conv2", "cool", "dead", "alpha>0.2", "gamma<=1", "sort:-csi",
                                 "limit:3", "neurons", "-selective", "class:blue", "color:grey", "model:tiny_cnn",
                                 "csi!=0", "hue>=0", "x", ":", ">", "\"", "sort:", "limit:99999999"]), max_size=6))
def test_fuzz_word_salad(idx, words):
    """Any word salad either answers with rows the SQL of its own explanation returns, or fails with
    a one-line QueryError; never another exception."""
    text = " ".join(words)
    try:
        rows = idx.search(text).rows()
    except QueryError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    sql, params = idx.explain(text)
    assert [r["key"] for r in rows] == [r["key"] for r in idx.query(sql, params).rows()]
    assert len(rows) <= 50 or "limit:" in text


@pytest.mark.parametrize("statement", [
    "INSERT INTO models (id, name, spec) VALUES (99, 'x', 'y')", "UPDATE neurons SET dead = true",
    "DELETE FROM neurons", "CREATE TABLE x (a INT)", "DROP TABLE neurons",
    "SELECT * FROM read_csv('/etc/passwd')", "COPY neurons TO '/tmp/neurons.csv'", "ATTACH '/tmp/other.duckdb'",
    "INSTALL httpfs", "LOAD httpfs", "SELECT 1; SELECT 2", "PRAGMA enable_profiling", "SET threads = 1",
    "SELECT * FROM read_parquet('/tmp/*.parquet')", "CALL pragma_version()",
])
def test_sql_guard_refuses(idx, index_dir, statement):
    before = hashlib.sha256((index_dir / "index.duckdb").read_bytes()).hexdigest()
    with pytest.raises(QueryError):
        idx.sql(statement)
    assert hashlib.sha256((index_dir / "index.duckdb").read_bytes()).hexdigest() == before


def test_sql_allows_queries_and_caps_rows(idx):
    assert idx.sql("WITH x AS (SELECT 1 AS a) SELECT a FROM x").rows() == [{"a": 1}]
    assert idx.sql("DESCRIBE neurons").rows()
    capped = idx.sql("SELECT * FROM range(100)", max_rows=10)
    assert len(capped) == 10 and capped.meta["truncated"]
    assert not idx.sql("SELECT * FROM range(10)", max_rows=10).meta["truncated"]


def test_slow_query_is_interrupted_at_the_limit(idx):
    """A query of 10^12 rows (hours) ends in a QueryTimeout naming the limit."""
    with pytest.raises(QueryTimeout, match="0.5 s time limit"):
        idx.sql("SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range * b.range % 7 = 3",
                time_limit=0.5)


def test_schema_documents_everything(idx):
    rows = idx.schema().rows()
    assert {r["table"] for r in rows} >= {"neurons", "topk", "neuron_view", "neuron_classes"}
    assert all(r["doc"] for r in rows), [r for r in rows if not r["doc"]]


def test_results_convert(idx):
    result = idx.search("conv1")
    assert len(result.df()) == len(result) == result.arrow().num_rows == len(list(result))
    html = result._repr_html_()
    assert html.count("<img") == len(result) and "data:image/png;base64," in html


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet", "html"])
def test_export_formats(index_dir, cli_runner, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    r = cli_runner.invoke(cli, ["export", str(index_dir), "conv1", "--format", fmt, "-o", str(out)])
    assert r.exit_code == 0, r.output
    if fmt == "json":
        rows = json.loads(out.read_text())
        assert [x["rank"] for x in rows] == list(range(1, len(rows) + 1))
        assert {"key", "layer", "color_index", "class_index", "csi", "top_classes", "colour_names"} <= set(rows[0])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(out).num_rows == 4
    if fmt == "html":
        page = out.read_text()
        assert "http://" not in page and "https://" not in page  # opens offline
        assert page.count("data:image/png;base64,") >= 3 and "tiny_cnn/conv1/0" in page


def test_dump_and_cli(index_dir, cli_runner, tmp_path):
    r = cli_runner.invoke(cli, ["dump", str(index_dir), "--to", str(tmp_path / "d")])
    assert r.exit_code == 0 and (tmp_path / "d" / "neurons.parquet").exists() and (tmp_path / "d" / "topk.parquet").exists()
    r = cli_runner.invoke(cli, ["sql", str(index_dir), "SELECT count(*) AS n FROM neurons", "--format", "json"])
    assert json.loads(r.output) == [{"n": 10}]
    r = cli_runner.invoke(cli, ["sql", str(index_dir), "DROP TABLE neurons"])
    assert r.exit_code == 7 and r.output.startswith("Error: only queries are allowed")
    r = cli_runner.invoke(cli, ["search", str(index_dir), "red conv1", "--explain"])
    assert "SELECT" in r.output and "parameters" in r.output
    r = cli_runner.invoke(cli, ["search", str(index_dir), "red conv9"])
    assert r.exit_code == 7 and "did you mean" in r.output
    r = cli_runner.invoke(cli, ["schema", str(index_dir)])
    assert "view neuron_view" in r.output and "color_index" in r.output


@pytest.mark.parametrize("text", ["alpha>true", "csi=false", "gamma>=nan", "alpha>1e400", "limit:-5", "sort:"])
def test_bad_values_are_query_errors(idx, text):
    with pytest.raises(QueryError):
        idx.search(text)


@pytest.mark.parametrize("sql, message", [
    ("SELECT octet_length(content) FROM read_blob('index.duckdb')", "reads files"),
    ("SELECT * FROM READ_TEXT('/etc/hostname')", "reads files"),
    ("SELECT * FROM parquet_scan('x.parquet')", "reads files"),
    ("SELECT 1 -- " + "x" * 100_001, "characters"),
])
def test_sql_guard_refuses_file_functions_and_huge_texts(idx, sql, message):
    with pytest.raises(QueryError, match=message):
        idx.sql(sql)


def test_reader_connections_have_memory_and_spill_limits(idx):
    row = idx.query("SELECT current_setting('memory_limit') AS m, current_setting('max_temp_directory_size') AS t").rows()[0]
    assert row["m"] == "1.8 GiB" and row["t"] == "953.6 MiB"  # 2GB and 1GB (settings)


def test_settings_given_to_an_index_reach_its_searches_and_sql(index_dir):
    """A Settings object passed to the index (not module constants) sets the row cap of a search
    without limit:, the largest limit: allowed, the SQL row cap and the search length cap."""
    from neuronindex.errors import QueryError
    from neuronindex.settings import Settings

    with neuronindex.open(index_dir) as plain:
        assert len(plain.search("conv2")) > 3
    tight = Settings(search_limit=3, search_max_limit=5, sql_max_rows=4, search_max_length=20)
    with neuronindex.open(index_dir, settings=tight) as idx:
        assert len(idx.search("conv2")) == 3
        assert len(idx.search("conv2 limit:5")) == 5
        with pytest.raises(QueryError, match="from 1 to 5"):
            idx.search("conv2 limit:6")
        with pytest.raises(QueryError, match="at most 20"):
            idx.search("conv2 " + "x" * 30)
        r = idx.sql("SELECT id FROM neurons")
        assert len(r) == 4 and r.meta["truncated"]
        assert idx.view().settings is tight
