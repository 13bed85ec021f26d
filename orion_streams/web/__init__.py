"""The HTTP API: Faust web views, JWT auth, problem+json errors and correlation ids."""
