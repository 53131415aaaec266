"""Fakes and helpers shared by the tests (tests/unit, tests/lab, tests/vm) and the benchmarks (bench/)."""
