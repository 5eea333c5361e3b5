"""The `Lambda` backend: Lambda Cloud instances, state and artifacts in an S3 bucket."""
