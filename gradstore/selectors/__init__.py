"""Selectors: pure numeric code over the gradient-source interface (no Lance here)."""

from gradstore.budget import budget_count, parse_budget
from gradstore.selectors.gtp import gtp
from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.less import less_topk
from gradstore.selectors.omp import fit_support, omp
from gradstore.selectors.query import PursuitResult, Query
from gradstore.selectors.random_subset import random_subset
from gradstore.selectors.scan import ScanQuery, correlation_scan
from gradstore.selectors.source import GradientSource, TensorSource
from gradstore.selectors.stacked import StackedPool

__all__ = [
    "GradientSource", "PursuitResult", "Query", "ScanQuery", "StackedPool", "TensorSource",
    "budget_count", "correlation_scan", "fit_support", "gtp", "gtp_paper", "less_topk", "omp",
    "parse_budget", "random_subset",
]
