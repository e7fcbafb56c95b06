"""`streamlet demo` (what `make demo` runs): the paper job offloads its compactions to a service."""

import re
import subprocess
import sys


def test_demo_runs_the_paper_job_with_remote_compactions() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamlet.cli", "demo", "--rows", "6000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"job paper-job finished in .*: 12,000 records in", output), output
    remote = re.search(r"compaction service: (\d+) compactions ran remotely", output)
    assert remote and int(remote.group(1)) > 0, output
    # The job's own count of the compactions it installed, by where they ran, agrees.
    summary = re.search(r"compactions: (\d+) local, (\d+) remote \(([\d.]+) CPU seconds", output)
    assert summary, output
    assert int(summary.group(2)) > 0 and float(summary.group(3)) > 0, output
    assert ", 0 failed, 0 rejected" in output
