#!/usr/bin/env python3
"""A tiny SSE upstream for bench scenario 3 (python3 stdlib only).

Every connection gets `200 text/event-stream` (chunked, as Dify's API sends it) and then one
event per second, `data: <time.time_ns() at send>`, until the client goes away. The first event
of a connection comes after a random 0-1 s offset so 2,000 streams spread over the second instead
of firing together. Any other path answers a small JSON body (for readiness checks).
"""
import argparse
import asyncio
import random
import resource
import socket
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200000, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
PLAIN = b'{"ok":true}'


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
    try:
        if "sse" not in path:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(PLAIN), PLAIN))
            await writer.drain()
            writer.close()
            return
        writer.write(HEAD)
        await writer.drain()
        loop = asyncio.get_running_loop()
        t = loop.time() + random.random()
        while True:
            await asyncio.sleep(max(0.0, t - loop.time()))
            if writer.is_closing():
                break
            payload = b"data: %d\n\n" % time.time_ns()
            writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            await writer.drain()
            t += 1.0
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    raise_nofile()
    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096,
                                        reuse_address=True)
    for s in server.sockets:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
