"""xsearch run from a user's own scripts and folders: a script without a main guard, a folder (or a clone)
named ``xsearch`` beside it, and the README's example as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from xsearch.testing.media import gradient_image, tone, write_video, write_wav

from scripts import xsearch_script
from trials import jpeg_folder

README_SCRIPT = """\
from xsearch import Collection, Query

media = Collection.open("media.db")
report = media.index(["photos"], workers=2)
print("indexed", report.indexed, "failed", report.failed, [f.message for f in report.failures])
hits = media.search(Query.item("photos/p0.jpg"), target="image", k=3)
print("top", Path(hits[0].uri).name)
"""


def test_a_script_without_a_main_guard_indexes_beside_a_folder_named_xsearch(tmp_path, trial):
    """Decode workers re-ran an unguarded script (and then failed on the writer lock); from a folder holding
    an ``xsearch`` folder, they imported that folder instead of the package. (The script sits in a folder of
    its own: a script beside an ``xsearch`` folder shadows an editable install in its own process, before
    xsearch runs; a regular install is found first.)"""
    work = tmp_path / "work"
    (work / "xsearch").mkdir(parents=True)  # the parent of a clone, say
    jpeg_folder(work / "photos")
    script = tmp_path / "scripts" / "index_my_photos.py"
    script.parent.mkdir()
    script.write_text("from pathlib import Path\n" + README_SCRIPT)
    env = {**os.environ, "XSEARCH_CHECKPOINT": str(trial), "XSEARCH_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "indexed 3 failed 0 []" in done.stdout and "top p0.jpg" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("indexed") == 1  # the script ran once, not once more per worker


def test_the_readme_python_example_runs_as_written(tmp_path, trial):
    """README's Python block, saved as a script (no main guard) and run from a folder that holds a folder
    named ``xsearch``, with its ``/data/...`` folders moved under this test's folder and the trial checkpoint
    in ``XSEARCH_CHECKPOINT``; every file it names exists."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    work = tmp_path / "work"
    (work / "xsearch").mkdir(parents=True)
    data = tmp_path / "data"
    jpeg_folder(data / "media", 2)
    gradient_image(data / "media" / "beach.jpg", seed=7)
    write_wav(data / "media" / "rain.wav", tone(2.0, 16000), 16000)
    jpeg_folder(data / "scans", 1)
    for name in ("bird.jpg", "a.jpg", "b.jpg"):
        gradient_image(work / name, seed=len(name))
    for name in ("rain.wav", "waves.wav"):
        write_wav(work / name, tone(2.0, 16000, freq=300), 16000)
    write_video(work / "clip.mp4", seconds=2.0)
    (work / "notes.txt").write_text("a note")
    for label in ("rain", "dry"):
        write_wav(jpeg_folder(work / "examples" / label, 1) / "x.wav", tone(2.0, 16000), 16000)
    script = tmp_path / "scripts" / "example.py"
    script.parent.mkdir()
    script.write_text(block.replace("/data/", f"{data}/") + "\nprint('the example ran')\n")
    env = {**os.environ, "XSEARCH_CHECKPOINT": str(trial), "XSEARCH_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0].startswith("5 0 []") and "the example ran" in done.stdout, done.stdout


def test_index_from_a_folder_holding_a_folder_named_xsearch(tmp_path, trial):
    work = tmp_path / "work"
    (work / "xsearch").mkdir(parents=True)
    jpeg_folder(work / "photos")
    argv = [xsearch_script(), "index", "photos", "--db", "media.db", "--checkpoint", str(trial), "--workers", "2"]
    done = subprocess.run([*argv, "--json"], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["indexed"], report["failed"]) == (3, 0), report["failures"]


def test_a_script_beside_a_clone_named_xsearch_imports_it(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "xsearch").symlink_to(root, target_is_directory=True)  # the clone, as `git clone` names it
    script = tmp_path / "find.py"
    script.write_text(
        "from xsearch import Collection, Query\n"
        "import xsearch.cli.main, xsearch.indexer.pipeline\n"
        "print(Collection.__module__, xsearch.indexer.pipeline.__name__)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["xsearch.collection", "xsearch.indexer.pipeline"]
