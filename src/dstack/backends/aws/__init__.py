"""The `AWS` backend: EC2 instances, state and artifacts in an S3 bucket, logs in CloudWatch,
secrets in Secrets Manager — all under the names the user's least-privilege IAM policy allows."""
