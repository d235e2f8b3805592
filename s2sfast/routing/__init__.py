"""The router's collaborators, one job each (s2sfast.router.Router owns one of each).

- :mod:`~s2sfast.routing.links`: outbound links: a (local, remote) pair's stream and its queue,
  from resolving and connecting through back-off retries to expiring what waited too long;
- :mod:`~s2sfast.routing.bidi`: XEP-0288 incoming streams serving a pair's outbound stanzas,
  and XEP-0478 limits the peer announced;
- :mod:`~s2sfast.routing.verify`: dialback verify requests brokered between streams;
- :mod:`~s2sfast.routing.sm`: XEP-0198 glue: unacked windows, resends and their waiters.

They log as ``s2sfast.router``: to an operator they are the router.
"""
