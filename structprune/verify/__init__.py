"""Verification of a rewrite."""
from structprune.verify.verify import Check, Verdict, verify_rewrite

__all__ = ["Check", "Verdict", "verify_rewrite"]
