"""The benchmark harness: the stack as `make up` runs it, load generators, and the report.

`bench/run.py` is the entry point (`make bench`, `make bench-quick`). Each benchmark measures
the system and, in the same run, a baseline doing the same work with no logic, and reports
the ratio: absolute times on a shared 2-core machine drift, the ratio much less.
"""
