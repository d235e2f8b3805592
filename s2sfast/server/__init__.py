"""The daemon people run: the ``s2sfast`` command, ``run``, the XEP-0114 component listener,
built-in answers, Prometheus metrics and ``probe``.
"""
