"""The S3 backend: AWS S3, MinIO, SeaweedFS, Ceph RGW (anything with conditional PUTs)."""

import time
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.settings import Settings
from shared.storage.base import Storage, StorageError

MISSING = {"NoSuchKey", "404", "NotFound"}
# 412: the key exists. 409: another conditional write to the key is in flight (AWS).
EXISTS, CONFLICT = {"PreconditionFailed", "412"}, {"ConditionalRequestConflict", "409"}
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def error_code(exc: ClientError) -> str:
    """The S3 error code of a failed call ("NoSuchKey", "PreconditionFailed", ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage(Storage):
    """Keys live under s3://bucket/prefix/; endpoint, region and keys come from AWS_* variables."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        scratch: Path,
        cache_max_bytes: int,
        part_bytes: int,
    ) -> None:
        super().__init__(scratch, cache_max_bytes)
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        # Files over part_bytes go up and down in parts: S3 refuses single PUTs over 5 GB.
        self.transfer = TransferConfig(
            multipart_threshold=part_bytes, multipart_chunksize=part_bytes, max_concurrency=4
        )

    @classmethod
    def from_url(cls, url: str, scratch: Path, settings: Settings) -> "S3Storage":
        """s3://bucket/prefix with a client built the usual boto3 way (AWS_ENDPOINT_URL, ...)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"GPT2FT_STORAGE_URL {url!r}: expected s3://bucket/prefix")
        config = Config(
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        )
        client = boto3.session.Session().client("s3", config=config)
        return cls(
            client, bucket, prefix, scratch, settings.cache_max_bytes, settings.s3_part_bytes
        )

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path, move: bool = False) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)
        if move:
            path.unlink()

    def create_exclusive(self, key: str, data: bytes) -> bool:
        for delay in (0.1, 0.2, 0.4, 0.8, 1.6):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
                return True
            except ClientError as exc:
                if error_code(exc) in EXISTS:
                    return False
                if error_code(exc) not in CONFLICT:
                    raise
            time.sleep(delay)  # a racing writer: once it lands, ours gets 412
        raise StorageError(f"{key}: conditional write kept conflicting")

    def read_bytes(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if error_code(exc) in MISSING:
                return None
            raise
        with response["Body"] as body:
            return bytes(body.read())

    def get_file(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
        except ClientError as exc:
            if error_code(exc) in MISSING:
                raise StorageError(f"{key} is missing from storage") from None
            raise

    def open_reader(self, key: str) -> IO[bytes]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if error_code(exc) in MISSING:
                raise StorageError(f"{key} is missing from storage") from None
            raise
        body: IO[bytes] = response["Body"]
        return body

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if error_code(exc) in MISSING:
                return None
            raise
        return int(head["ContentLength"])

    def list_keys(self, prefix: str) -> list[str]:
        start = self._key(prefix) + "/"
        cut = len(self._key("x")) - 1  # the bucket prefix and its slash
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        )
        return sorted(item["Key"][cut:] for page in pages for item in page.get("Contents", []))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self._key(key)} for key in keys[start : start + DELETE_BATCH]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return None

    def describe(self) -> str:
        endpoint = self.client.meta.endpoint_url
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"
