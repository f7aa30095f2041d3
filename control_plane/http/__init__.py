"""The HTTP plumbing every route module shares (layer 3: it imports only ``db`` and the bottom modules).

routing.py  the declarative ``Router``: one decorator registers a handler with its auth mode, its
            pydantic body/query/response models and its statuses; authentication is injected
            (an ``Authenticator``) when the routes are registered on an app
parsing.py  reading the body within a limit, JSON parsing, validation -> ``InvalidInput``
models.py   the request/response base models and ``UTCDateTime``
errors.py   the error middleware: domain errors -> statuses, one JSON error shape
auth.py     who is calling: the admin token, the admin panel's cookie, a tenant's API key
"""
