"""The Lambda backend's configuration form (the fields of the user's Lambda document)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dstack.backends.lambdacloud.api import DEFAULT_BASE_URL


class LambdaBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Lambda")
    SECRET_FIELDS: ClassVar[set[str]] = {"api_key", "secret_access_key"}

    type: Literal["lambda"] = "lambda"
    api_key: str = Field(min_length=1, title="API key",
                         description="The API key to authenticate dstack with Lambda Cloud. Create one in the Lambda "
                         "Cloud dashboard: API keys → Generate API key (https://cloud.lambda.ai/api-keys)")
    regions: list[str] = Field(min_length=1, title="Regions",
                               description="The list of regions where dstack may provision infrastructure. It is "
                               "recommended to select as many regions as possible to maximize availability.")
    storage: Literal["aws"] = Field(default="aws", title="Storage",
                                    description="The storage provider that dstack will use to store the state and "
                                    "artifacts. Currently, only AWS is supported.",
                                    json_schema_extra={"labels": {"aws": "AWS"}})
    access_key_id: str = Field(min_length=1, title="Access key ID",
                               description="The Access key ID to authenticate dstack with AWS")
    secret_access_key: str = Field(min_length=1, title="Secret access key",
                                   description="The Secret access key to authenticate dstack with AWS")
    bucket: str = Field(min_length=3, title="Bucket", description="The S3 bucket to store state and artifacts")
    base_url: str = Field(default=DEFAULT_BASE_URL, title="API URL",
                          description="The Lambda Cloud API's address (change it only for a test double)",
                          json_schema_extra={"advanced": True})

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return value.strip().removeprefix("s3://").rstrip("/")


CONFIG_MODEL = LambdaBackendConfig
