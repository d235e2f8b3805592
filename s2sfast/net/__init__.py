"""asyncio and the operating system: streams (TCP + MemoryBIO TLS), connecting, DNS, TLS
contexts and peer certificates, the inbound shaper, reconnect back-off.
"""
