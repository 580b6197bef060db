"""`make bench`: edgec measured against its peers, written to BENCHMARKS.md (``python -m bench.suite``).

Not part of the installed package: a program on top of edgec, run from the repository root.
"""
