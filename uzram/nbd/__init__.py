"""Serving a device with nbdkit: the plugin, thread states, the control endpoint, the
runtime directory and the name's lock, TLS keys, and the one nbdkit launcher."""
