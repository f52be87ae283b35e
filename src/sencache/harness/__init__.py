"""Measuring caches against each other: the method registry and its independent step counter, compare at
equal NFE, threshold tuning, SenCache variants, audit and ablations, fidelity metrics and reports."""
