"""The report page in a real headless browser (Debian's Chromium; `make test` installs it
when it can): it loads without console messages, every section and figure is there, and a
screenshot is taken."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import pytest

from tests.cli.test_cli import run
from tests.ops.test_report import built  # noqa: F401 - the fixture

BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                if p), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium: `apt-get install chromium` (make test does it as "
                            "root) to run the browser test")
SECTIONS = ("summary", "residuals", "composition", "duplicates", "overlap", "examples",
            "weights", "provenance")


def browse(page, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """Chromium, headless, on ``page``; its console messages go to stderr."""
    return subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_sees_a_script_error(tmp_path):
    """The check itself: a page whose script fails is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notAFunction();</script></body></html>")
    done = browse(bad, tmp_path, "--dump-dom")
    assert any("notAFunction" in line for line in console(done.stderr))


def test_report_loads_cleanly_with_every_section(built, tmp_path):  # noqa: F811
    _, path, data, _, _, _ = built
    page = tmp_path / "report.html"
    run("report", path, "--out", page, "--by", "src", "--data", data)
    done = browse(page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console(done.stderr) == []
    dom = done.stdout
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', dom)
    assert len(images) == 4
    for b64 in images:  # each figure decodes to a real image
        img = mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100
    shot = tmp_path / "report.png"
    done = browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400")
    assert done.returncode == 0 and shot.stat().st_size > 10_000
    assert mpimg.imread(shot).shape[:2] == (2400, 1200)
