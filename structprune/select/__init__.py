"""Selection: scores -> Plan."""
from structprune.select.plan import Plan
from structprune.select.select import check_ratio, is_ignored, select_plan

__all__ = ["Plan", "check_ratio", "is_ignored", "select_plan"]
