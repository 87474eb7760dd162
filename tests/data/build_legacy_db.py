"""Builds ``tests/data/legacy.db`` and ``legacy.json``: a database written by an earlier xsearch, and what that
xsearch answered from it, for ``tests/test_compatibility.py`` (which also runs ``build`` and ``read`` with
today's code, and ``read`` with the earlier code on a database written today).

Run with the earlier code first on the path (a checkout of it with ``indexer/`` and ``cli/`` linked into its
``xsearch/`` folder, as the package installs them)::

    PYTHONPATH=/path/to/old/checkout python tests/data/build_legacy_db.py tests/data

The media are made in a temporary folder and deleted: the rows keep their paths, the searches read only
what the database holds (stored items, moments, and texts embedded by the seeded tiny test model). Only the
public API (``Collection``, ``Query``) is used, so that any version of xsearch runs this file.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from xsearch import Collection, Query
from xsearch.encoder import Encoder
from xsearch.model import create_model
from xsearch.testing.media import event_recording, gradient_image, tone, write_wav

INFO_KEYS = ("items", "by_modality", "errors", "moments")


def tiny_encoder() -> Encoder:
    torch.manual_seed(0)  # as tests/conftest.py makes it
    return Encoder(create_model("tiny_test"), device="cpu", precision="fp32")


def answers(collection: Collection, photo: int, sound: int) -> dict:
    """What the database answers, for every kind of search: stored items, a text, a filter, a glob, a
    composed query, moments; its counts and indices."""

    def search(query: Query, **options) -> list[list]:
        found = collection.search(query, k=4, **options)
        return [
            [r.id, Path(r.uri).name, r.modality.value, round(r.score, 5), round(r.calibrated or 0.0, 3), r.start, r.end,
             sorted(Path(d).name for d in r.duplicates)]
            for r in found
        ]  # fmt: skip

    info = collection.info()
    return {
        "info": {key: info[key] for key in INFO_KEYS},
        "indices_fresh": sorted(name for name, facts in info["indices"].items() if facts["fresh"]),
        "item_search": search(Query.item(photo), target="image"),
        "text_search": search(Query.text("a red photo")),
        "where_search": search(Query.item(photo), target="image", where="width >= 300"),
        "path_search": search(Query.item(photo), path="/*photo[12].jpg"),
        "composed_search": search(Query.item(photo) + Query.item(sound) * 0.5 - Query.text("noise") * 0.2),
        "excluding_search": search(Query.item(photo), target="image", exclude_query_items=True),
        "moment_search": search(Query.item(sound, at=9.0), moments=True, target="audio"),
        "moments_per_file": search(Query.text("a loud event"), moments=True, per_file=2),
    }


def build(out: Path, encoder: Encoder | None = None) -> dict:
    """``out/legacy.db`` indexed from made-up media, and what it answers (also written to ``out/legacy.json``)."""
    db = out / "legacy.db"
    shutil.rmtree(db, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="xsearch-legacy-") as scratch:
        media = Path(scratch) / "media"
        (media / "depth").mkdir(parents=True)
        for i in range(5):
            gradient_image(media / f"photo{i}.jpg", seed=i)
        shutil.copy(media / "photo0.jpg", media / "copy-of-photo0.jpg")  # the same bytes twice: folded
        gradient_image(media / "depth" / "room.png", mode="L", seed=7)
        write_wav(media / "tone.wav", tone(12.0, 16000), 16000)
        write_wav(media / "event.wav", event_recording(14.0, 16000, event_at=8.0), 16000)
        (media / "note.txt").write_text("a red photo of a bird at sea")
        (media / "broken.jpg").write_bytes(b"not a jpeg")  # an error row
        (media / "zz-gone.txt").write_text("a note indexed last, then deleted")
        with Collection.open(db, encoder=encoder or tiny_encoder()) as collection:
            collection.index([media], moments=True, workers=0, progress=False)
            (media / "zz-gone.txt").unlink()  # pruned: its id, the highest, is never given again (next_id)
            collection.index([media], moments=True, workers=0, progress=False, prune=True)
            photo = collection.item(str(media / "photo0.jpg"), ["id"])["id"]
            sound = collection.item(str(media / "event.wav"), ["id"])["id"]
            expected = {"photo": photo, "sound": sound, "next_id": int((db / "next_id").read_text())}
            expected.update(answers(collection, photo, sound))
    for lease in (db / "readers").glob("*.json"):
        lease.unlink()
    (out / "legacy.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def read(db: Path, photo: int, sound: int) -> dict:
    """What the database at ``db`` answers to this code."""
    with Collection.open(db, encoder=tiny_encoder()) as collection:
        return answers(collection, photo, sound)


if __name__ == "__main__":
    if sys.argv[1] == "read":  # read DB PHOTO SOUND: the answers as JSON
        print(json.dumps(read(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
    else:
        build(Path(sys.argv[1]))
