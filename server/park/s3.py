"""The S3 park store, for pools whose nodes share no filesystem: objects in an S3-compatible bucket (AWS S3, MinIO,
SeaweedFS, ...), written with a multipart upload whose parts go up in parallel, each carrying its own SHA-256 as
metadata in the object's manifest (`NAME.manifest`, uploaded after the object). A park counts only once the store
has confirmed it: the upload completed, HEAD reports the object's full size, and the manifest is in place. Reads
fetch the parts with ranged GETs in parallel and check each against the manifest.

Credentials and endpoint come the way boto3 takes them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the endpoint URL
given here); none is ever logged."""

from __future__ import annotations

import os
from typing import Any

from .store import (
    DEFAULT_PARALLEL,
    DEFAULT_PART,
    MANIFEST,
    Manifest,
    ParkStoreError,
    PartStore,
    check_key,
    parts_of,
    run_parts,
    sha256,
    source_part,
    write_part,
)

MIN_PART = 5 << 20  # S3's smallest part but the last


class S3ParkStore(PartStore):
    name = "s3"

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, prefix: str = "", region: str | None = None,
                 part_size: int = DEFAULT_PART, parallel: int = DEFAULT_PARALLEL, client: Any = None) -> None:
        import boto3
        from botocore.config import Config

        if part_size < MIN_PART:
            raise ValueError(f"S3 parts must be at least {MIN_PART} bytes")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.parallel = parallel
        # A session of its own: boto3's default session keeps the credentials it first found.
        self._s3 = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region or os.environ.get("AWS_REGION", "us-east-1"),
            config=Config(max_pool_connections=max(10, parallel * 2), retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, what: str, key: str, e: Exception) -> ParkStoreError:
        return ParkStoreError(f"S3 park store: cannot {what} {key!r} in bucket {self.bucket!r}: {e}")

    def put(self, key: str, fd: int, offset: int, length: int) -> Manifest:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._key(key)
        n = parts_of(length, self.part_size)
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=k + MANIFEST)  # the old object stops being complete
            up = self._s3.create_multipart_upload(Bucket=self.bucket, Key=k)
            upload_id = up["UploadId"]
        except (BotoCoreError, ClientError) as e:
            raise self._fail("start writing", key, e) from None
        etags: dict[int, str] = {}
        try:
            def part(i: int) -> str:
                data = source_part(fd, offset, length, self.part_size, i)
                r = self._s3.upload_part(Bucket=self.bucket, Key=k, UploadId=upload_id, PartNumber=i + 1, Body=data)
                etags[i + 1] = r["ETag"]
                return sha256(data)

            hashes = run_parts(n, self.parallel, part)
            self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=k, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p, "ETag": etags[p]} for p in sorted(etags)]},
            )
            head = self._s3.head_object(Bucket=self.bucket, Key=k)
            if int(head["ContentLength"]) != length:
                raise ParkStoreError(f"S3 holds {head['ContentLength']} bytes of {key!r} after writing, not {length}")
            m = Manifest(key, length, self.part_size, hashes)
            self._s3.put_object(Bucket=self.bucket, Key=k + MANIFEST, Body=m.to_json())
            self._s3.head_object(Bucket=self.bucket, Key=k + MANIFEST)
            return m
        except (BotoCoreError, ClientError, OSError) as e:
            try:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id)
            except (BotoCoreError, ClientError):
                pass
            raise self._fail("write", key, e) from None

    def _manifest(self, key: str) -> Manifest:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(key) + MANIFEST)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ParkStoreError(f"park object {key!r} is not in bucket {self.bucket!r} (or was never "
                                     "completed)") from None
            raise self._fail("read the manifest of", key, e) from None
        except BotoCoreError as e:
            raise self._fail("read the manifest of", key, e) from None
        return Manifest.from_json(body, key)

    def get(self, key: str, fd: int, offset: int = 0) -> Manifest:
        from botocore.exceptions import BotoCoreError, ClientError

        m = self._manifest(key)
        k = self._key(key)

        def part(i: int) -> str:
            lo = i * m.part_size
            n = min(m.part_size, m.size - lo)
            data = b""
            if n > 0:
                r = self._s3.get_object(Bucket=self.bucket, Key=k, Range=f"bytes={lo}-{lo + n - 1}")
                data = r["Body"].read()
            if len(data) != max(n, 0) or sha256(data) != m.part_sha256[i]:
                raise ParkStoreError(f"part {i} of park object {key!r} does not match its checksum")
            write_part(fd, offset + lo, data)
            return ""

        try:
            run_parts(len(m.part_sha256), self.parallel, part)
        except (BotoCoreError, ClientError) as e:
            raise self._fail("read", key, e) from None
        return m

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._key(key)
        try:
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k + MANIFEST}, {"Key": k}]})
        except (BotoCoreError, ClientError) as e:
            raise self._fail("delete", key, e) from None

    def partial(self, prefix: str = "") -> dict[str, float]:
        """(Multipart uploads cut short are not objects: the bucket's AbortIncompleteMultipartUpload rule ends them.)"""
        import time

        from botocore.exceptions import BotoCoreError, ClientError

        objects: dict[str, float] = {}
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    objects[obj["Key"][len(self.prefix):]] = obj["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as e:
            raise self._fail("list", prefix, e) from None
        now = time.time()
        return {k: now - t for k, t in objects.items() if not k.endswith(MANIFEST) and k + MANIFEST not in objects}

    def list(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        out: list[str] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix):]
                    if name.endswith(MANIFEST):
                        out.append(name[: -len(MANIFEST)])
        except (BotoCoreError, ClientError) as e:
            raise self._fail("list", prefix, e) from None
        return sorted(out)
