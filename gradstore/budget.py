"""Budgets: a count (``1000``), a fraction (``0.05``) or a percentage (``"5%"``)."""

from __future__ import annotations

import math

from gradstore.errors import GradstoreError

Budget = int | float | str


def parse_budget(budget: Budget) -> int | float:
    """Normalise a budget to an ``int`` count or a ``float`` fraction in (0, 1]."""
    if isinstance(budget, bool):
        raise GradstoreError(f"budget {budget!r} is not a count, fraction or percentage")
    if isinstance(budget, int):
        value: int | float = budget
    elif isinstance(budget, float):
        value = budget
    else:
        text = str(budget).strip()
        try:
            if text.endswith("%"):
                value = float(text[:-1]) / 100.0
                if value > 1.0:
                    raise GradstoreError(
                        f"budget {text} is over 100%; use a percentage in (0, 100]"
                    )
            elif text.isdigit():
                value = int(text)
            else:
                value = float(text)
        except ValueError:
            raise GradstoreError(
                f"budget {text!r} is not a count (1000), fraction (0.05) or percentage (5%)"
            ) from None
    if isinstance(value, float):
        if not math.isfinite(value) or value <= 0:
            raise GradstoreError(f"budget {budget!r} must be positive")
        if value > 1.0:
            if value.is_integer():
                return int(value)
            raise GradstoreError(
                f"budget {budget!r} is neither a count nor a fraction <= 1; "
                "write a count (1000), a fraction (0.05) or a percentage (5%)"
            )
        return value
    if value <= 0:
        raise GradstoreError(f"budget {budget!r} must be at least 1 example")
    return value


def budget_count(budget: Budget, num_rows: int) -> int:
    """The number of examples ``budget`` stands for in a pool of ``num_rows``."""
    value = parse_budget(budget)
    if isinstance(value, float):
        count = max(1, int(round(value * num_rows)))
    else:
        count = value
    if count > num_rows:
        raise GradstoreError(
            f"budget {budget!r} asks for {count} examples but the pool has {num_rows}; "
            "use a smaller count or a fraction"
        )
    return count


def budget_label(budget: Budget) -> str:
    """A stable text form of a budget, as the user wrote it."""
    value = parse_budget(budget)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
