"""Who may call the server (docs/auth.md): ``keys.py`` (the API-key store), ``guard.py`` (the
checks on gRPC streams and HTTP requests), ``sessions.py`` (browser sessions) and ``keys_cli.py``
(``runstream server keys``)."""
