"""A file upload and download through the Object Store.

The file is read and sent in 128 KiB chunks and downloaded straight into another file
(``writeinto=``): neither side holds the whole file in memory.  The download checks
the SHA-256 digest stored with the object, so a corrupt or incomplete object raises
``DigestMismatchError`` instead of returning wrong bytes.

Start a server with ``nats-server -js``; the address comes from ``NATS_URL`` (default
``nats://127.0.0.1:4222``).
"""

import hashlib
import os
import tempfile

import natsync
from natsync.js import api

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


with natsync.connect(url) as nc, tempfile.TemporaryDirectory() as tmp:
    js = nc.jetstream()
    store = js.create_object_store(bucket="files", description="example uploads")
    try:
        src = os.path.join(tmp, "report.bin")
        with open(src, "wb") as f:
            for _ in range(8):
                f.write(os.urandom(1 << 20))  # an 8 MiB file

        meta = api.ObjectMeta(name="reports/2024.bin", description="yearly report")
        with open(src, "rb") as f:
            info = store.put("reports/2024.bin", f, meta=meta)
        print(f"uploaded {info.name}: {info.size} bytes in {info.chunks} chunks, digest {info.digest}")

        for obj in store.list():
            print(f"listed: {obj.name} ({obj.size} bytes, {obj.description})")

        dst = os.path.join(tmp, "downloaded.bin")
        with open(dst, "wb") as f:
            result = store.get("reports/2024.bin", writeinto=f)
        print(f"downloaded {result.info.size} bytes; identical: {sha256_of(src) == sha256_of(dst)}")

        store.delete("reports/2024.bin")
        try:
            store.get("reports/2024.bin")
        except natsync.js.errors.ObjectNotFoundError:
            print("after delete: ObjectNotFoundError")
    finally:
        js.delete_object_store("files")
