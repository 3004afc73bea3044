"""Selection: scores -> Plan. The `select` stage; the package is named `selection` so that it does not
shadow `structprune.select`, the API function. `targets` plans to a MAC or parameter budget instead of a
ratio, costing candidate plans on the channel graph (`plan_cost`); `sensitivity_allocation` spreads a
budget by a table of per-group sensitivity."""
from structprune.selection.group_ratios import GroupRatio, as_group_ratios
from structprune.selection.plan import Plan, compose_plans
from structprune.selection.plan_cost import PlanCost
from structprune.selection.select import check_max_group_ratio, check_ratio, check_round_to, is_ignored, select_plan
from structprune.selection.sensitivity_allocation import SensitivityTable, plan_by_sensitivity, sensitivity_ranking
from structprune.selection.targets import (
    LatencyTarget,
    Target,
    check_target_options,
    meet_target,
    plan_for_target,
)

__all__ = ["GroupRatio", "LatencyTarget", "Plan", "PlanCost", "SensitivityTable", "Target", "as_group_ratios",
           "check_max_group_ratio", "check_ratio", "check_round_to", "check_target_options", "compose_plans",
           "is_ignored", "meet_target", "plan_by_sensitivity", "plan_for_target", "select_plan",
           "sensitivity_ranking"]
