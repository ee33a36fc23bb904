"""The composition root: the command line, the service that wires every package, its workers,
logging, metrics and the configuration file. Nothing imports this package."""
