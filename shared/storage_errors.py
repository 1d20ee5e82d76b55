"""What an S3 failure means for whoever sees it: retry, fix the configuration, or a plain refusal.

An operator who forgot the bucket or the credentials must read that, once, at start-up and in
``/readyz``; a client must never be told to "retry shortly" for a fault that will not heal.
"""

from __future__ import annotations

from shared.errors import ImgfarmError, StorageConfigError, StorageError, TransientError

# S3 error codes that only an operator can fix (AWS, MinIO and moto spell them alike).
CONFIG_CODES: dict[str, str] = {
    "NoSuchBucket": "the bucket does not exist (create it: imgfarm storage init)",
    "AccessDenied": "access denied (check the credentials' permissions on the bucket)",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidAccessKeyId": "the access key id is unknown to the endpoint (AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the secret key does not match (AWS_SECRET_ACCESS_KEY)",
    "InvalidBucketName": "the bucket name is not valid (IMGFARM_STORAGE_URL)",
    "PermanentRedirect": "the bucket lives in another region (IMGFARM_S3_REGION)",
    "AuthorizationHeaderMalformed": "the signing region is wrong (IMGFARM_S3_REGION)",
}
# head_bucket answers with a bare status and no error code.
CONFIG_STATUSES: dict[int, str] = {
    403: CONFIG_CODES["AccessDenied"],
    404: CONFIG_CODES["NoSuchBucket"],
    301: CONFIG_CODES["PermanentRedirect"],
}


def classify_s3_error(op: str, bucket: str, error: Exception) -> ImgfarmError:
    """The farm's error for a botocore failure of ``op`` on ``bucket`` (raise it ``from``)."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return StorageConfigError(
            f"S3 {op}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or an instance role)"
        )
    if isinstance(error, NoRegionError):
        return StorageConfigError(f"S3 {op}: no region (set IMGFARM_S3_REGION)")
    if not isinstance(error, ClientError):
        # Connection refused, timeouts, DNS: the endpoint may come back.
        return TransientError(f"S3 {op} failed: {error}")
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    code = str(error.response.get("Error", {}).get("Code", ""))
    if status >= 500 or status == 429:
        return TransientError(f"S3 {op} failed with {status}: {error}")
    meaning = CONFIG_CODES.get(code)
    if meaning is None and op == "head_bucket":
        meaning = CONFIG_STATUSES.get(status)
    if meaning is not None:
        return StorageConfigError(f"S3 bucket {bucket!r}: {meaning}")
    return StorageError(f"S3 {op} failed: {error}")
