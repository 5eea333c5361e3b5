"""The `local` backend: this machine, as it is, at price 0."""
