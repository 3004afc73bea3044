"""Selection: scores -> Plan. The `select` stage; the package is named `selection` so that it does not
shadow `structprune.select`, the API function."""
from structprune.selection.plan import Plan, compose_plans
from structprune.selection.select import check_max_group_ratio, check_ratio, check_round_to, is_ignored, select_plan

__all__ = ["Plan", "check_max_group_ratio", "check_ratio", "check_round_to", "compose_plans", "is_ignored",
           "select_plan"]
