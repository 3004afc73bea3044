"""Verification of a rewrite."""
from structprune.data.running import eval_outputs as run_model  # noqa: F401 - kept for api.py; use data.running.eval_outputs
from structprune.verify.verify import Check, Verdict, verify_rewrite

__all__ = ["Check", "Verdict", "run_model", "verify_rewrite"]
