"""Where state lives between restarts: the Store protocol, its records and errors, and the
embedded and Redis backends."""
