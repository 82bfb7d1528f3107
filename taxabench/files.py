"""Atomic writes of run files, and the fault-injection points the resume tests kill a run at.

Every file and folder a run keeps (state, stage folders, samples, metrics, reports, caches) is written under a
temporary name beside its target and renamed into place, so a reader — a rerun after a kill included — sees the
old version or the new one, never half of one. Temporary names start with `.` and end in `.partial`, so no reader
takes one for a finished file; a file's temporary carries the writer's process id (two processes writing the same
file never share one), and the next write of that file removes the temporaries of writers that are gone (a run
killed mid-write leaves nothing behind once the file is written again).

Fault injection: `TAXABENCH_FAULT=<event>:<n>[,<event>:<n>...]` makes the process exit at once (`os._exit`, no
cleanup, as `kill -9`) at the n-th occurrence of `<event>` in this process. A write of kind K is event `K`, fired
when the new content is complete under its temporary name but not yet renamed (the moment a kill leaves the most
behind); the training loop fires `train-step` after each optimizer step and the sampler `sample-batch` after each
generated batch. `TAXABENCH_FAULT_LOG=<file>` appends the name of every event passed to that file, so one clean
run lists every point a sweep can kill at; `TAXABENCH_FAULT_RANK=<r>` limits the kill to rank r of an `accelerate
launch` / `torchrun` (the others see it die). `tests/faults.py` drives them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FAULT_ENV = "TAXABENCH_FAULT"
FAULT_LOG_ENV = "TAXABENCH_FAULT_LOG"
FAULT_RANK_ENV = "TAXABENCH_FAULT_RANK"  # set: only the process of that rank (`$RANK`) of a launch dies
FAULT_EXIT_CODE = 86  # what a process killed by an injected fault exits with
_events: Counter[str] = Counter()


def fault_point(event: str) -> None:
    """Exit now if `$TAXABENCH_FAULT` asks for this occurrence of `event` (see the module docstring)."""
    log = os.environ.get(FAULT_LOG_ENV)
    if log:
        with open(log, "a") as handle:
            handle.write(event + "\n")
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get(FAULT_RANK_ENV, os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return
    _events[event] += 1
    for item in spec.split(","):
        name, _, nth = item.strip().rpartition(":")
        if name == event and nth.isdigit() and _events[event] == int(nth):
            os._exit(FAULT_EXIT_CODE)


def partial_path(path: Path) -> Path:
    """Where the new version of `path` is written before it is renamed into place (per process: two processes
    writing the same file never share a temporary)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def stale_temporaries(path: Path) -> list[Path]:
    """The temporaries of `path` whose writing process no longer exists (killed before its rename)."""
    found = []
    for temporary in path.parent.glob(f".{path.name}.*.partial"):
        pid = temporary.name[len(path.name) + 2:-len(".partial")]
        if pid.isdigit() and not _alive(int(pid)):
            found.append(temporary)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def writing(path: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """`with writing(target, kind) as temporary: <write temporary>` — the target appears only once the block
    finished; on an exception the temporary is removed and the target left as it was. Temporaries of the same
    target left by dead processes are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)
    temporary = partial_path(path)
    try:
        yield temporary
        fault_point(kind)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes, kind: str) -> Path:
    with writing(path, kind) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, kind: str) -> Path:
    return write_bytes(path, text.encode(), kind)


def write_json(path: str | os.PathLike[str], data: Any, kind: str, **dumps: Any) -> Path:
    return write_text(path, json.dumps(data, **{"indent": 2, **dumps}) + "\n", kind)


@contextmanager
def building_folder(path: str | os.PathLike[str], kind: str, finished_by: str | None = None) -> Iterator[Path]:
    """`with building_folder(target, kind) as staging: <fill staging>` — the folder appears whole, by one rename,
    once the block finished; an existing target is replaced. The staging folder is hidden and per process, like a
    file's temporary, and those of dead processes are removed first.

    `finished_by`: for a cache that several processes may build at once, each build giving the same result — a
    target holding this file is finished and kept, and this build is discarded; an empty target is replaced, any
    other is an error (it is not this cache's to delete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        remove(stale)
    staging = partial_path(path)
    remove(staging)
    staging.mkdir()
    try:
        yield staging
        fault_point(kind)
        if finished_by is None:
            remove(path)
            os.replace(staging, path)
        elif not (path / finished_by).is_file():
            try:
                os.replace(staging, path)  # onto nothing or an empty folder
            except OSError as error:  # a folder with content: another process's finished build, or not ours
                if not (path / finished_by).is_file():
                    from taxabench.errors import DamagedFileError

                    raise DamagedFileError(path, f"it holds files but no {finished_by}",
                                           "move it away and rerun (it is rebuilt)") from error
    finally:
        remove(staging)


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_json(path: Path, fix: str | Callable[[], str]) -> Any:
    """A JSON run file, or one `DamagedFileError` line naming it and `fix` (what to do) when it does not parse."""
    from taxabench.errors import DamagedFileError

    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFileError(path, f"it is not valid JSON ({error})", fix if isinstance(fix, str) else fix()) \
            from error
