"""A platform that answers too much: an HTTP/1.1 server (plain asyncio streams, its own process) whose
answer to any POST is chosen by the request's `deviceNo` (or `iccids`) form value:

* `length-N`: a `Content-Length: N` answer, N bytes of a JSON envelope that never ends;
* `chunked-N`: the same N bytes with `Transfer-Encoding: chunked` and no length;
* `close-N`: the same N bytes with neither, the end of the body being the end of the connection;
* `gzip-N`: a `Content-Encoding: gzip` answer of a few KB that unpacks to N bytes;
* anything else: the vendor's queryDeviceFlow sample with its Content-Length.

Bodies are generated as they are written, so the server itself holds no more than a chunk. `GET
/stats` answers, per mode, the bytes written of the last answer and whether the client dropped the
connection before its end (`{"chunked": {"sent": 4259840, "aborted": true, "size": 268435456}}`).

    python -m tests.big_answer_server PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from pathlib import Path
from urllib.parse import parse_qsl

SAMPLE = (Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes()
CHUNK = 64 * 1024
HEAD = b'{"code": 0, "message": "ok", "data": {"device": {"deviceNo": "'

stats: dict[str, dict[str, object]] = {}


async def write_body(writer: asyncio.StreamWriter, mode: str, size: int, chunked: bool) -> None:
    record: dict[str, object] = {"size": size, "sent": 0, "aborted": False}
    stats[mode] = record
    filler = b"x" * CHUNK
    sent = 0
    try:
        while sent < size:
            piece = (HEAD + filler)[:min(CHUNK, size - sent)] if sent == 0 else filler[:min(CHUNK, size - sent)]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            sent += len(piece)
            record["sent"] = sent
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        record["aborted"] = True


def gzip_bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    parts = [packer.compress(HEAD)]
    block = b" " * (1024 * 1024)
    left = size - len(HEAD)
    while left > 0:
        parts.append(packer.compress(block[:left]))
        left -= len(block)
    parts.append(packer.flush())
    return b"".join(parts)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            length = int(headers.get("content-length", "0"))
            form = dict(parse_qsl((await reader.readexactly(length)).decode())) if length else {}
            if method == "GET" and target == "/stats":
                body = json.dumps(stats).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
                continue
            ask = form.get("deviceNo") or form.get("iccids") or ""
            mode, _, size_text = ask.partition("-")
            size = int(size_text) if size_text.isdigit() else 0
            if mode == "length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
                await write_body(writer, mode, size, chunked=False)
            elif mode == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                await write_body(writer, mode, size, chunked=True)
            elif mode == "close":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                await write_body(writer, mode, size, chunked=False)
                break
            elif mode == "gzip":
                packed = gzip_bomb(size)
                stats[mode] = {"size": size, "sent": len(packed), "aborted": False}
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed))
                await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(SAMPLE), SAMPLE))
                await writer.drain()
            if stats.get(mode, {}).get("aborted"):
                break
    except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
