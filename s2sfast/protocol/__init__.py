"""The sans-IO protocol: negotiation machines, dialback, policy, errors, the XEP-0114
component machine. Events in, actions out; nothing here touches a socket, the event loop or a clock.
"""
