"""Skip/resume logic of `taxabench run`: finished steps are skipped, killed ones rerun, changes are refused."""

import pytest

from taxabench.errors import TaxabenchError
from taxabench.steps import Ledger, Step, dependents, fingerprint, run_steps


class Killed(Exception):
    pass


def make_steps(log: list[str], fingerprints: dict[str, str], kill: str | None = None) -> list[Step]:
    def action(name):
        def run():
            if name == kill:
                raise Killed(name)
            log.append(name)
        return run

    def clean(name):
        return lambda: log.append(f"clean {name}")

    return [
        Step("backbone", fingerprints["backbone"], action("backbone"), clean("backbone")),
        Step("train/a", fingerprints["train/a"], action("train/a"), clean("train/a"), after=("backbone",)),
        Step("train/b", fingerprints["train/b"], action("train/b"), clean("train/b"), after=("backbone",)),
        Step("sample/a", fingerprints["sample/a"], action("sample/a"), clean("sample/a"), after=("train/a",)),
        Step("report", fingerprints["report"], action("report"), clean("report"), after=("sample/a",)),
    ]


FPS = {name: fingerprint(name, 1) for name in ("backbone", "train/a", "train/b", "sample/a", "report")}


def test_killed_run_resumes_with_the_unfinished_steps(tmp_path):
    ledger_path = tmp_path / "steps.json"
    log: list[str] = []
    with pytest.raises(Killed):
        run_steps(make_steps(log, FPS, kill="sample/a"), Ledger(ledger_path))
    assert log == ["backbone", "train/a", "train/b"]
    log.clear()
    run_steps(make_steps(log, FPS), Ledger(ledger_path))
    assert log == ["sample/a", "report"]
    log.clear()
    run_steps(make_steps(log, FPS), Ledger(ledger_path))
    assert log == []
    assert set(Ledger(ledger_path).entries) == set(FPS)


def test_changed_inputs_are_refused_and_force_redoes_the_step_and_what_follows(tmp_path):
    ledger_path = tmp_path / "steps.json"
    run_steps(make_steps([], FPS), Ledger(ledger_path))
    changed = {**FPS, "train/a": fingerprint("train/a", 2)}
    with pytest.raises(TaxabenchError, match=r"step 'train/a' .* --force train/a"):
        run_steps(make_steps([], changed), Ledger(ledger_path))
    log: list[str] = []
    run_steps(make_steps(log, changed), Ledger(ledger_path), force=["train/a"])
    assert log == ["clean train/a", "train/a", "clean sample/a", "sample/a", "clean report", "report"]


def test_force_a_family_of_steps_and_unknown_names(tmp_path):
    ledger_path = tmp_path / "steps.json"
    run_steps(make_steps([], FPS), Ledger(ledger_path))
    log: list[str] = []
    run_steps(make_steps(log, FPS), Ledger(ledger_path), force=["train"])
    assert [entry for entry in log if not entry.startswith("clean")] == ["train/a", "train/b", "sample/a", "report"]
    with pytest.raises(TaxabenchError, match="no such step"):
        run_steps(make_steps([], FPS), Ledger(ledger_path), force=["trian"])


def test_dependents_are_transitive():
    steps = make_steps([], FPS)
    assert dependents(steps, {"backbone"}) == set(FPS)
    assert dependents(steps, {"train/b"}) == {"train/b"}
