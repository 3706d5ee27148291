#!/usr/bin/env python3
"""Small S3 client for the end-to-end tests (boto3).

The shell suites need to look at, copy and tamper with the objects of a volume
on an S3 server without going through s3vault. Every command takes the server
from --endpoint (or $E2E_ENDPOINT) and credentials from the usual AWS_* env.

  s3tool.py wait                          wait until the endpoint answers
  s3tool.py mb BUCKET                     create a bucket (ok if it exists)
  s3tool.py mb-locked BUCKET              create a bucket with Object Lock enabled
  s3tool.py versions s3://B/PREFIX        every version under PREFIX: key<TAB>version id
  s3tool.py rm-version s3://B/KEY ID      delete one version for good (exit 1 if refused)
  s3tool.py retention s3://b/key          "<mode> <retain-until, RFC 3339>" of an object
  s3tool.py ls s3://b/prefix              "<relative key>\t<size>" per object
  s3tool.py du s3://b/prefix              total bytes of all objects
  s3tool.py get s3://b/key FILE           download one object
  s3tool.py put FILE s3://b/key           upload one object
  s3tool.py rm s3://b/key                 delete one object
  s3tool.py dump s3://b/prefix DIR [META] download every object under DIR;
                                          META (a file) gets every key with
                                          its HEAD metadata, for scanning
  s3tool.py restore DIR s3://b/prefix     make the prefix hold exactly DIR
"""

import json
import os
import sys
import time

import boto3
from botocore.config import Config


def client():
    endpoint = os.environ.get("E2E_ENDPOINT") or None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"},
                      retries={"max_attempts": 3, "mode": "standard"}),
    )


def split(url):
    if not url.startswith("s3://"):
        sys.exit(f"s3tool: not an s3:// URL: {url}")
    rest = url[5:]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def list_keys(s3, bucket, prefix):
    """Yield (key, size) of every object under prefix/ (all of the bucket if empty)."""
    kw = {"Bucket": bucket}
    if prefix:
        kw["Prefix"] = prefix + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(**kw):
        for obj in page.get("Contents", []):
            yield obj["Key"], obj["Size"]


def rel(prefix, key):
    return key[len(prefix) + 1:] if prefix else key


def main(argv):
    if len(argv) >= 2 and argv[0] == "--endpoint":
        os.environ["E2E_ENDPOINT"] = argv[1]
        argv = argv[2:]
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    s3 = client()

    if cmd == "wait":
        deadline = time.time() + float(args[0] if args else 60)
        while True:
            try:
                s3.list_buckets()
                return
            except Exception as exc:  # any failure means "not up yet"
                if time.time() > deadline:
                    sys.exit(f"s3tool: endpoint not answering: {exc}")
                time.sleep(0.3)
    elif cmd == "mb":
        try:
            s3.create_bucket(Bucket=args[0])
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        except s3.exceptions.BucketAlreadyExists:
            pass
    elif cmd == "mb-locked":
        s3.create_bucket(Bucket=args[0], ObjectLockEnabledForBucket=True)
    elif cmd == "retention":
        bucket, key = split(args[0])
        head = s3.head_object(Bucket=bucket, Key=key)
        print(head.get("ObjectLockMode", "NONE"), head.get("ObjectLockRetainUntilDate", "").isoformat())
    elif cmd == "ls":
        bucket, prefix = split(args[0])
        for key, size in sorted(list_keys(s3, bucket, prefix)):
            print(f"{rel(prefix, key)}\t{size}")
    elif cmd == "du":
        bucket, prefix = split(args[0])
        print(sum(size for _, size in list_keys(s3, bucket, prefix)))
    elif cmd == "get":
        bucket, key = split(args[0])
        s3.download_file(bucket, key, args[1])
    elif cmd == "put":
        bucket, key = split(args[1])
        s3.upload_file(args[0], bucket, key)
    elif cmd == "versions":
        bucket, prefix = split(args[0])
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for v in page.get("Versions", []):
                print(f"{rel(prefix, v['Key'])}\t{v['VersionId']}")
    elif cmd == "rm-version":
        bucket, key = split(args[0])
        try:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=args[1])
        except s3.exceptions.ClientError as exc:
            sys.exit(f"s3tool: {exc.response['Error']['Code']}: {exc}")
    elif cmd == "rm":
        bucket, key = split(args[0])
        s3.delete_object(Bucket=bucket, Key=key)
    elif cmd == "dump":
        bucket, prefix = split(args[0])
        out = args[1]
        meta = open(args[2], "w") if len(args) > 2 else None
        for key, _ in list_keys(s3, bucket, prefix):
            path = os.path.join(out, rel(prefix, key))
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            s3.download_file(bucket, key, path)
            if meta:
                head = s3.head_object(Bucket=bucket, Key=key)
                head.pop("ResponseMetadata", None)
                meta.write(json.dumps({"key": key, "head": head}, default=str) + "\n")
        if meta:
            meta.close()
    elif cmd == "restore":
        src = args[0]
        bucket, prefix = split(args[1])
        for key, _ in list(list_keys(s3, bucket, prefix)):
            s3.delete_object(Bucket=bucket, Key=key)
        for root, _, files in os.walk(src):
            for name in files:
                path = os.path.join(root, name)
                key = os.path.relpath(path, src)
                s3.upload_file(path, bucket, f"{prefix}/{key}" if prefix else key)
    else:
        sys.exit(f"s3tool: unknown command {cmd}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
