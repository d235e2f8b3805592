"""bench/e2e: the deployed node measured end to end against Prosody and ejabberd.

``python3 -m bench.e2e`` (or ``python3 bench/e2e/run.py``) from the repository root; see
bench/README.md ("End to end") and ``--help``.
"""
