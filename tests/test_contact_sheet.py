"""The contact sheet (``--html``): negative weights marked, originals linked only when asked, IMU plots and
audio pictures drawn in Chromium, a result file that became a pipe skipped.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xsearch import Modality
from xsearch.cli.main import app
from xsearch.testing.media import tone, write_imu, write_wav

runner = CliRunner()


@pytest.fixture
def sheet(tmp_path, checkpoint):
    media = tmp_path / "media"
    (media / "imu").mkdir(parents=True)
    write_imu(media / "imu" / "walk.npy")
    write_imu(media / "imu" / "run.npy", seed=2)
    write_wav(media / "tone.wav", tone(2.0, 16000, noise=0.3), 16000)
    db = tmp_path / "db"
    runner.invoke(app, ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "-q"])
    page = tmp_path / "sheet.html"
    args = ["search", "--db", str(db), "--item", str(media / "imu" / "walk.npy")]
    args += ["--item", f"{media / 'tone.wav'}:-0.2", "--html", str(page), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return media, page


def test_contact_sheet_marks_negatives_and_links_only_when_asked(sheet):
    media, page = sheet
    html = page.read_text()
    assert 'class="card subtracted"' in html and "weight -0.2 (subtracted)" in html
    assert "file://" not in html and "/<wbr>" in html
    assert html.count('alt="imu"') == 3 and html.count('alt="waveform"') == 2  # 2 IMU results + input, sounds
    linked = page.with_name("linked.html")
    args = ["search", "--db", str(page.parent / "db"), "--item", str(media / "tone.wav"), "--html", str(linked)]
    runner.invoke(app, [*args, "--link-originals"])
    assert f'href="{(media / "tone.wav").as_uri()}"' in linked.read_text()


def test_contact_sheet_shows_imu_plots_and_audio_pictures_in_chromium(sheet, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (README: apt-get install chromium) - cannot render")
    _, page = sheet
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1000"]
    subprocess.run([*command, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def near(colour, tolerance=60):
        return (np.abs(pixels - np.array(colour)).sum(axis=-1) < tolerance).sum()

    # Three IMU plots (the input, two results): colours only their lines use (green, purple, teal).
    assert near((40, 150, 40)) > 300 and near((150, 40, 170)) > 300 and near((20, 160, 170)) > 1000
    assert near((30, 90, 170), 40) > 10_000  # two waveform pictures of 192 x 96, mostly envelope
    assert near((204, 51, 51), 40) > 500  # the red dashed border and weight of the subtracted input


def test_a_result_file_replaced_by_a_pipe_does_not_block_the_sheet(tmp_path):
    import os
    import threading

    from xsearch.contact_sheet import _preview

    fifo = tmp_path / "note.txt"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    done = []
    worker = threading.Thread(target=lambda: done.append(_preview(Modality.TEXT, str(fifo), None)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done and "no preview" in done[0]
