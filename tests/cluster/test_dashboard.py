"""The web dashboard in headless Chromium (Debian's `chromium`; `make test` installs it when it is
missing): the rendered page shows the running job, its checkpoints and savepoints, the compaction
offload and the task managers, a wrong token shows the sign-in form, and a screenshot has the
page's colours.
"""

import shutil
import subprocess
from pathlib import Path

from tests.cluster.harness import TOKEN, Cluster
from tests.cluster.png import read_png

ENDLESS = str(Path(__file__).parent / "jobs" / "endless.py")
WIDTH, HEIGHT = 1280, 800
HEADER_BLUE = (0x1D, 0x35, 0x57)
RUNNING_GREEN = (0xD8, 0xF3, 0xDC)


def _chromium(tmp_path: Path, url: str, *flags: str) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is missing: `make test` installs it (apt-get install -y chromium)"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={WIDTH},{HEIGHT}",
            "--virtual-time-budget=5000",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_dashboard_shows_jobs_checkpoints_savepoints_offload_and_task_managers(
    cluster: Cluster, tmp_path: Path
) -> None:
    tm = cluster.start_taskmanager(slots=2)
    job_id = cluster.submit(ENDLESS, "-D", "checkpoint.interval=200ms")
    cluster.wait_job(job_id, lambda j: (j["latest_checkpoint"] or 0) >= 1)
    taken = cluster.cli("savepoint", job_id, "--format", "canonical")
    assert taken.returncode == 0, taken.stderr
    page = f"{cluster.url}/dashboard/#token={TOKEN}"

    dom = _chromium(tmp_path, page, "--dump-dom")
    for text in (
        job_id,
        "endless",
        "RUNNING",
        tm,
        "Compaction offload",
        "CPU seconds moved off the job",
        "1 running of 1 jobs",
        "Savepoints",
        taken.stdout.strip(),
        "canonical",
    ):
        assert text in dom, text
    assert 'id="login" hidden' in dom

    wrong = _chromium(tmp_path, f"{cluster.url}/dashboard/#token=wrong", "--dump-dom")
    assert "the token was not accepted" in wrong and job_id not in wrong

    screenshot = tmp_path / "dashboard.png"
    _chromium(tmp_path, page, f"--screenshot={screenshot}")
    width, height, rows = read_png(screenshot)
    assert (width, height) == (WIDTH, HEIGHT)
    assert rows[10][10] == HEADER_BLUE  # the header bar
    colours = {pixel for row in rows for pixel in row}
    assert RUNNING_GREEN in colours  # the job's RUNNING badge
    assert len(colours) > 50  # text was drawn, not a blank page
