"""The budget table a model folder carries: calibrated policies for several budgets."""
from __future__ import annotations

from pathlib import Path

from adaptive_exit import io
from adaptive_exit.policies import Budget, ExitPolicy, build_policy

from .kinds import BudgetSpec

BUDGET_TABLE_FILE = "budget_policies.json"


class BudgetTable:
    """Calibrated policies for several budgets, so a running model can move between
    budgets without reloading or recalibrating (a device under load drops from 70%
    to 40% of the full model).

    :meth:`policy_for` is the one place a budget becomes a policy: the policy
    calibrated for exactly that budget; otherwise the one calibrated for the
    largest budget of the same kind that does not exceed it; otherwise, for
    fractions of the full model, a per-sample hard cap at that fraction (on the
    default policy when one is given: ``default | budget:max_fraction=F``), which
    holds for every sample; otherwise a clear error.
    """

    def __init__(self, entries: dict[str, str | ExitPolicy] | None = None):
        self.entries: dict[BudgetSpec, ExitPolicy] = {}
        for budget, policy in (entries or {}).items():
            self.add(budget, policy)  # parses and validates both

    def add(self, budget: str | BudgetSpec, policy: str | dict | ExitPolicy) -> None:
        self.entries[BudgetSpec.parse(budget)] = build_policy(policy)

    def policy_for(self, budget: str | BudgetSpec, default: ExitPolicy | str | None = None) -> ExitPolicy:
        budget = BudgetSpec.parse(budget)
        if budget in self.entries:
            return self.entries[budget]
        fitting = [b for b in self.entries if b.kind == budget.kind and b.value <= budget.value]
        if fitting:
            return self.entries[max(fitting, key=lambda b: b.value)]
        if budget.kind_of.fraction:
            if budget.value >= 1:
                return build_policy(default) if default is not None else build_policy("full")
            cap = Budget(max_fraction=budget.value)
            return build_policy(default) | cap if default is not None else cap
        known = ", ".join(str(b) for b in sorted(self.entries, key=str)) or "none"
        raise ValueError(f"no calibrated policy fits budget {budget} (calibrated: {known}); run calibrate for it")

    def to_dict(self) -> dict[str, str]:
        ordered = sorted(self.entries.items(), key=lambda item: (item[0].kind, item[0].value))
        return {str(b): p.spec() for b, p in ordered}

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / BUDGET_TABLE_FILE
        io.write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "BudgetTable":
        """The model folder's table (empty if it has none; a clear error if it is corrupt)."""
        path = Path(model_dir) / BUDGET_TABLE_FILE
        if not path.exists():
            return cls()
        try:
            data = io.read_json(path)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            return cls(data)
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid budget table ({exc}); re-run calibrate") from exc

    @classmethod
    def update(cls, model_dir: str | Path, entries: dict[str | BudgetSpec, str | ExitPolicy]) -> "BudgetTable":
        """Add entries to the model folder's table under a file lock (concurrent
        calibrations of one model keep every entry) and return the merged table."""
        with io.locked(Path(model_dir) / BUDGET_TABLE_FILE):
            table = cls.load(model_dir)
            for budget, policy in entries.items():
                table.add(budget, policy)
            table.save(model_dir)
        return table


def check_request_options(policy: str | None, budget: str | None) -> None:
    """Parse a command's ``--policy`` / ``--budget`` (errors name the option)."""
    try:
        if policy:
            build_policy(policy)
    except ValueError as exc:
        raise ValueError(f"--policy {policy}: {exc}") from None
    try:
        if budget:
            BudgetSpec.parse(budget)
    except ValueError as exc:
        raise ValueError(f"--budget {budget}: {exc}") from None


def policy_for_request(model_dir: str | Path, default: ExitPolicy, policy: str | None = None,
                       budget: str | None = None) -> ExitPolicy:
    """What a command runs: ``policy`` if given, else the model's budget table's choice
    for ``budget``, else the model's default policy."""
    if policy:
        return build_policy(policy)
    if budget is None:
        return default
    return BudgetTable.load(model_dir).policy_for(budget, default)
