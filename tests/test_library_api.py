"""The Python API's conveniences: ``Query`` arithmetic, a string as a text query, ``Labels`` rows, a context
manager, a misspelt constructor named, ``k`` above the item count.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from xsearch import Collection, Modality, Query
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.store import Database, ItemRecord

from trials import basis_vector

runner = CliRunner()


def test_python_api_conveniences(collection, tiny_model):
    media, db = collection
    queries = [Query.image("a.jpg"), Query.audio("b.wav") * 2]
    total = sum(queries)
    assert [t.weight for t in total.terms] == [1.0, 2.0]
    assert repr(total / 2) == "Query.image('a.jpg') * 0.5 + Query.audio('b.wav')"
    assert repr(Query.depth("d.png") - Query.text("night") * 0.2) == "Query.depth('d.png') + Query.text('night') * -0.2"
    with Collection.open(db, encoder=Encoder(tiny_model, device="cpu", precision="fp32")) as opened:
        assert repr(opened) == f"Collection({str(db)!r}, model='tiny_test')"
        hits = opened.search(Query.item(str(media / "cover.png")), k=1)
        labels = opened.classify(["a", "b"], target="audio")
        assert [label.uri for label in labels] == [str(media / "tone.wav")] and labels.to_pandas().shape == (1, 5)
        assert opened.engine is not None
    assert opened._engine is None and hits[0].uri == str(media / "cover.png")  # closed on leaving the block


def test_a_string_searches_as_text_and_a_misspelt_constructor_is_named(trial_db, trial):
    from xsearch import Collection, Query

    _, db = trial_db
    with Collection.open(db, checkpoint=trial) as media:
        as_text = media.search("a dog barking", k=3)
        assert [r.id for r in as_text] == [r.id for r in media.search(Query.text("a dog barking"), k=3)]
    with pytest.raises(AttributeError, match=r"did you mean Query\.image\?"):
        Query.imgae("bird.jpg")


def test_labels_rows_and_an_empty_errors_list(trial_db, trial):
    from xsearch import Collection

    _, db = trial_db
    with Collection.open(db, checkpoint=trial) as media:
        labels = media.classify(["a", "b"])
        assert [row.id for row in labels.rows] == [row["id"] for row in labels.as_json()] and len(labels.rows) == 4
        frame = media.search("x", k=2).to_pandas()
    assert list(frame.columns)[:6] == ["rank", "score", "calibrated", "id", "uri", "modality"]
    said = runner.invoke(app, ["errors", "--db", str(db)])
    assert said.exit_code == 0 and said.stdout.startswith("no errors")


def test_a_huge_k_allocates_for_the_items_there_are(tmp_path):
    import tracemalloc

    from xsearch import Collection, Query

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord(f"/{i}.jpg", Modality.IMAGE, basis_vector(i)) for i in range(20)])
    tracemalloc.start()
    hits = Collection.open(tmp_path / "db").search(Query.item(0), k=10**9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(hits) == 20 and peak < 200 * 2**20
