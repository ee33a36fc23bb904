"""The operations that change state: policy import, overrides, devices, the control socket and
the store watcher that applies changes to a running server."""
