"""Multi-tenant WhatsApp gateway: the control plane.

Dependencies point one way::

    config <- db / crypto <- bridge.protocol, supervisor <- providers, webhooks, realtime, messaging
           <- api, admin <- app
"""

__version__ = "0.1.0"
