"""The admin panel: server-rendered pages (Jinja2) under ``/admin``, live over the same Socket.IO events
the CRM gets. ``views.setup(app)`` wires it; ``session`` holds the signed-cookie session and CSRF
tokens (standard library only, so ``http.auth`` can accept the cookie without importing the views)."""
