"""The old name of tests/helpers.py (no tests here), kept only for test_differential_tp.py, which imports
it and is being edited elsewhere; delete this file when that test moves to `from helpers import`."""
from helpers import MHABlock, assert_state_equal, dropped, group_with, member, outputs, positions  # noqa: F401
from helpers import randomize_norm_stats, reason_kinds, refs, snapshot_state  # noqa: F401
