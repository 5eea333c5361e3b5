"""The on-instance runner. It talks to the bucket only, never to the server."""
