"""Verification of a rewrite."""
from structprune.verify.verify import Check, Verdict, run_model, verify_rewrite

__all__ = ["Check", "Verdict", "run_model", "verify_rewrite"]
