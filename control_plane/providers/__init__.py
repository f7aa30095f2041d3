"""Outbound providers: the WhatsApp Cloud API client (the Web bridge lives in supervisor/bridge)."""
