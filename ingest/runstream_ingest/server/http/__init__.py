"""The server's HTTP API (docs/http-api.md): ``api.py`` (projects, runs table, edits, sign-in),
``data.py`` (history, series, console, system metrics, files), ``blobs.py`` (file upload and
download), ``live.py`` (server-sent events) and ``util.py`` (what every handler shares)."""
