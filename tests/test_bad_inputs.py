"""The bad-input suite, as one table: every capability's cases, counted and checked here.

The cases live next to the fixtures they need, in three modules that run them:
`test_bad_inputs_load.py` (loading, training, the command line), `test_bad_inputs_core.py`
(capture / lens / generate, random prefixes, attention sinks, latent loops and their head
files) and `test_bad_inputs_files.py` (steering-vector files, the app's endpoints). Each case
asserts the exact error class, that the message names the bad value and what is valid, and
that no file changed (`badinput.check`). This module holds them to the bar the suite was
written for: at least ten cases per capability, unique ids, and every class one of the
workbench's own errors (SystemExit for argparse's refusals, OSError for the one case
where the disk itself fails: ENOSPC is reported as the operating system's error), so that a capability whose
table shrinks, or a case that starts expecting a bare ValueError, fails here.
"""

from __future__ import annotations

import pytest

import test_bad_inputs_core as core
import test_bad_inputs_files as files
import test_bad_inputs_load as load
from workbench import errors

CAPABILITIES = {
    "loading": load.LOAD_CASES,
    "capture/lens/generate": core.CAPTURE_CASES,
    "steering files": files.STEERING_FILE_CASES,
    "prefix": core.PREFIX_CASES,
    "sinks": core.SINK_CASES,
    "latent loops and their files": core.LATENT_CASES,
    "training": load.TRAIN_CASES,
    "app endpoints": files.APP_CASES,
    "command line": load.CLI_CASES,
}


@pytest.mark.parametrize("capability", list(CAPABILITIES))
def test_every_capability_keeps_ten_bad_inputs(capability):
    table = CAPABILITIES[capability]
    assert len(table) >= 10, f"{capability}: {len(table)} bad inputs, the suite keeps at least 10"
    ids = [c.id for c in table]
    assert len(set(ids)) == len(ids), f"{capability}: duplicate case ids {sorted({i for i in ids if ids.count(i) > 1})}"


def test_every_case_expects_a_workbench_error():
    """A refusal is one of `workbench.errors` (each also a built-in: InputError is a
    ValueError ...), so callers can catch the workbench's errors as one family."""
    for capability, table in CAPABILITIES.items():
        for case in table:
            ok = issubclass(case.error, errors.WorkbenchError) or case.error is SystemExit or (
                case.error is OSError and "No space left on device" in case.names
            )
            assert ok, f"{capability} / {case.id}: expects {case.error.__name__}, not a workbench error"
            assert case.names, f"{capability} / {case.id}: names nothing the message must contain"
