"""The dashboard's server side: accounts, sessions, CSRF and the REST API (SPEC §6)."""
