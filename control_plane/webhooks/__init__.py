"""Meta's webhook: the verification handshake, signed deliveries, their parsing, routing to tenants
and storage."""
