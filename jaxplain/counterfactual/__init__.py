"""Counterfactuals by retrieval: banks of real items, their nearest-neighbour indexes, the target
solver, the verifier, and the batched pipeline that joins them."""

from jaxplain.counterfactual.bank import Bank, BankError, build_bank
from jaxplain.counterfactual.engine import Counterfactual, CounterfactualResult, PairResult, counterfactuals
from jaxplain.counterfactual.index import (
    AUTO_SCANN_MIN_SIZE,
    ExactIndex,
    Index,
    IndexFileError,
    ScannIndex,
    ScannParams,
    build_index,
    load_index,
)
from jaxplain.counterfactual.solver import SolverConfig, Targets, solve_targets
from jaxplain.counterfactual.verify import Verified, exhaustive, verify

__all__ = [
    "AUTO_SCANN_MIN_SIZE",
    "Bank",
    "BankError",
    "Counterfactual",
    "CounterfactualResult",
    "ExactIndex",
    "Index",
    "IndexFileError",
    "PairResult",
    "ScannIndex",
    "ScannParams",
    "SolverConfig",
    "Targets",
    "Verified",
    "build_bank",
    "build_index",
    "counterfactuals",
    "exhaustive",
    "load_index",
    "solve_targets",
    "verify",
]
