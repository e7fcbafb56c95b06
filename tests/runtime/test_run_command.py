"""`streamlet run`'s terminal, as a real subprocess: the progress line, warnings and the summary;
INFO lines (two per compaction, one per checkpoint) only with `-v`; the last progress line shows
the summary's figures. A mistyped `STREAMLET_*` variable is warned of; remote compaction without
an address does not start."""

import json
import re
from pathlib import Path

import pytest

from tests.runtime.jobs import distinct_keys
from tests.support.processes import ProcessRunner

RECORDS = 5000
# Small memtables flush by volume, and L0 stops writers at 4 tables until compactions are
# installed: the job cannot end without compacting, whatever the speed of the machine.
LSM_OPTIONS = {
    "lsm.memtable_bytes": 16 << 10,
    "lsm.l0_compaction_trigger": 2,
    "lsm.l0_slowdown_trigger": 3,
    "lsm.l0_stop_trigger": 4,
}
PER_COMPACTION = re.compile(r"\bcompaction [0-9a-f]+ installed \d+ outputs")
PROGRESS = re.compile(
    r"^\[distinct-keys\] \d\d:\d\d in ([\d,]+) \([\d,]+/s\) out ([\d,]+) \([\d,]+/s\) "
    r"checkpoints (\d+) compactions local (\d+) remote (\d+)$",
    re.M,
)
SUMMARY = re.compile(
    r"^job distinct-keys finished in [\d.]+ s: ([\d,]+) records in, ([\d,]+) out, (\d+) "
    r"checkpoints, 0 restarts; compactions: (\d+) local, (\d+) remote \(",
    re.M,
)


def run_job(
    runner: ProcessRunner, tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> str:
    args = ["run", str(Path(distinct_keys.__file__)), *flags]
    for key, value in {
        "state.backend": "lsm",
        "state.options": json.dumps(LSM_OPTIONS),
        "state.dir": (tmp_path / "state").as_uri(),
        "state.local-dir": str(tmp_path / "local"),
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "checkpoint.interval": "200ms",
        "progress.interval": "100ms",
    }.items():
        args += ["-D", f"{key}={value}"]
    process = runner.python(
        module="streamlet.cli",
        args=args,
        env={"DISTINCT_KEYS_RECORDS": str(RECORDS), **(env or {})},
    )
    assert process.wait(timeout=120) == 0, process.describe("failed")
    return process.output()


def figures(pattern: re.Pattern[str], text: str) -> list[int]:
    return [int(group.replace(",", "")) for group in pattern.findall(text)[-1]]


def test_a_run_shows_progress_and_summary_but_no_line_per_compaction(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    output = run_job(process_runner, tmp_path)
    summary = figures(SUMMARY, output)
    assert summary[:2] == [RECORDS, RECORDS] and summary[3] > 0, output  # it did compact
    assert not PER_COMPACTION.search(output), output
    assert " INFO " not in output, output
    # The rest is progress lines (and warnings, should any come up), the summary last.
    lines = output.splitlines()
    assert all(PROGRESS.match(line) or " WARNING " in line for line in lines[:-1]), output
    assert SUMMARY.match(lines[-1]), output


def test_verbose_shows_the_info_lines(process_runner: ProcessRunner, tmp_path: Path) -> None:
    output = run_job(process_runner, tmp_path, "-v")
    assert PER_COMPACTION.search(output), output
    assert re.search(r" INFO checkpoint \d+ completed", output), output


@pytest.mark.parametrize("flags", [(), ("--verbose",)], ids=["quiet", "verbose"])
def test_the_last_progress_line_agrees_with_the_summary(
    process_runner: ProcessRunner, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    output = run_job(process_runner, tmp_path, *flags)
    progress = figures(PROGRESS, output)  # in, out, checkpoints, local, remote
    assert progress == figures(SUMMARY, output), output
    last_progress = [m.start() for m in PROGRESS.finditer(output)][-1]
    assert last_progress < SUMMARY.search(output).start(), output  # type: ignore[union-attr]


def test_a_mistyped_environment_variable_is_warned_of(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    output = run_job(process_runner, tmp_path, env={"STREAMLET_STATE_BACKNED": "memory"})
    assert output.count("STREAMLET_STATE_BACKNED") == 1, output
    assert (
        " WARNING environment variable STREAMLET_STATE_BACKNED names no configuration key; "
        "ignored (did you mean STREAMLET_STATE_BACKEND?)" in output
    ), output
    assert figures(SUMMARY, output)[3] > 0, output  # still the lsm backend of -D


def test_remote_compaction_without_an_address_does_not_start(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    process = process_runner.python(
        module="streamlet.cli",
        args=["run", str(Path(distinct_keys.__file__)), "-D", "compaction.mode=remote"],
        cwd=tmp_path,
    )
    assert process.wait(timeout=60) == 1
    assert process.output().startswith(
        "error: compaction.mode is remote, but compaction.service.address is not set"
    ), process.output()
    assert not (tmp_path / ".streamlet").exists()  # nothing ran
