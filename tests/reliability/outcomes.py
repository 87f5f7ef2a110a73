"""Outcome counts of the RPC fuzz suite ((family, status code) -> calls), printed after a run."""

import collections

OUTCOMES: collections.Counter = collections.Counter()
