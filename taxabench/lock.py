"""One writer per run folder: the lock every command that writes into a run folder takes first.

`taxabench run`, `train`, `sample`, `eval`, `report` and `demo` hold `<run>/.taxabench.lock` while they work. The
lock is an advisory `flock` on that file, so the kernel releases it the moment its holder dies (`kill -9`, an
out-of-memory kill, a node lost by the scheduler): a dead holder never blocks a rerun. The file also records who
holds it (pid, host, start time, command), so a second writer is refused with one line naming the holder, and a
writer that finds the record of a holder that is gone says it takes the lock over.

Within one process the lock is re-entrant (`taxabench run` holds it while its steps call the library functions).
The worker processes a run starts hold nothing: they run under their parent's lock, and die with it
(`taxabench.run`). Under `accelerate launch` only the main process takes it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taxabench.errors import TaxabenchError

LOCK_FILE = ".taxabench.lock"
_held: dict[Path, int] = {}  # lock path -> depth, in this process


class RunFolderLocked(TaxabenchError):
    """Another live process writes into the run folder."""


def lock_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / LOCK_FILE


def holder(run_dir: str | os.PathLike[str]) -> dict | None:
    """The record of the lock's last holder (live or not), or None."""
    try:
        return json.loads(lock_path(run_dir).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def describe(record: dict | None) -> str:
    if not record:
        return "a process that left no record"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: "
            f"{record.get('command')}")


@contextmanager
def run_folder_lock(run_dir: str | os.PathLike[str], command: str | None = None,
                    say=None) -> Iterator[None]:
    """Hold the run folder's lock for the block, or raise `RunFolderLocked` naming its live holder.

    `command`: what the record says this writer runs (default: this process's command line). `say`: called with a
    line when the lock of a holder that is gone is taken over (default: printed to stderr)."""
    import fcntl

    path = lock_path(run_dir).resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderLocked(
                f"{path.parent} is in use by {describe(holder(path.parent))}; wait for it to finish or stop it "
                "(a run folder has one writer at a time), or use another run name") from None
        previous = holder(path.parent)
        if previous and previous.get("pid") is not None:
            (say or _say)(f"taking over the lock of {path.parent} from {describe(previous)} (no longer running)")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": command or " ".join(["taxabench", *sys.argv[1:]])}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            handle.seek(0)
            handle.truncate()  # an empty record: released normally, nothing to take over
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def _say(line: str) -> None:
    print(line, file=sys.stderr)
