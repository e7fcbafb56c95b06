"""Helper processes that must not outlive the process that started them.

A process killed with SIGKILL cannot stop its children: they are adopted by init and keep running
(compaction workers, the task managers of `streamlet cluster`). Each such child calls
`exit_with_parent(parent_pid)` as it starts. A daemon thread then checks every `POLL_S` seconds
whether its parent is still `parent_pid`, and ends the child at once (`os._exit`) when it is not:
its parent is gone, so nothing would read its results.

Rules:
- The parent passes its own pid (`os.getpid()`) explicitly. A child that read `os.getppid()` itself
  could read init's pid if the parent died before the child got that far, and then never exit.
- Only children of our own processes opt in. A process a user starts from a shell (a task manager
  under `nohup`) keeps running when the shell exits.
- A child ends within `POLL_S` seconds of its parent; multiprocessing's resource tracker, whose pipe
  those children hold open, then sees end-of-file and exits too.

A pool passes it as its workers' initializer:
`ProcessPoolExecutor(n, initializer=exit_with_parent, initargs=(os.getpid(),))`.
"""

import os
import threading
import time

POLL_S = 0.5
EXIT_CODE = 70  # EX_SOFTWARE: the process did not end on its own


def exit_with_parent(parent_pid: int) -> None:
    """End this process soon after `parent_pid` stops being its parent (at most `POLL_S` later)."""
    if os.getppid() != parent_pid:
        os._exit(EXIT_CODE)  # the parent is gone already

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os._exit(EXIT_CODE)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
