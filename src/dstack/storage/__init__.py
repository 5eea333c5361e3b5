"""Project storage ("the bucket"): the channel between the server and the agents."""

from dstack.storage.base import Storage
from dstack.storage.factory import storage_from_url

__all__ = ["Storage", "storage_from_url"]
