import pytest

from gradstore.budget import budget_count, budget_label, parse_budget
from gradstore.errors import GradstoreError


@pytest.mark.parametrize(
    "budget,n,k",
    [(1000, 5000, 1000), ("1000", 5000, 1000), (0.05, 5000, 250), ("0.05", 5000, 250),
     ("5%", 5000, 250), ("100%", 7, 7), (1.0, 7, 7), ("0.001", 100, 1), ("12.0", 50, 12)],
)
def test_budget_forms(budget, n, k):
    assert budget_count(budget, n) == k


@pytest.mark.parametrize("bad", [0, -3, "0", "-1%", "abc", "150%", "1.5", float("nan"), "", True])
def test_bad_budgets_rejected(bad):
    with pytest.raises(GradstoreError):
        parse_budget(bad)


def test_budget_larger_than_pool():
    with pytest.raises(GradstoreError, match="pool has 10"):
        budget_count(11, 10)


def test_labels():
    assert budget_label("5%") == "0.05"
    assert budget_label(100) == "100"
