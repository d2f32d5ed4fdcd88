#!/usr/bin/env python3
"""Idle keep-alive connections for bench scenario 4 (python3 stdlib only).

Opens --conns connections to 127.0.0.1:<port>, sends one keep-alive `GET <path>` on each and reads
the whole answer, then leaves them idle. Prints `READY <ok> <failed>` when done, holds the
connections until a line arrives on stdin (or --hold seconds pass), then resets them (SO_LINGER 0,
so no TIME_WAIT piles up between runs) and prints a JSON summary.
"""
import argparse
import asyncio
import json
import resource
import socket
import struct
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200000, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue


async def one(port, path, sem, conns, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
            writer.write(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: bench-idle\r\n\r\n"
                          % (path, port)).encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 15)
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                errors.append(head[:80])
            conns.append(writer)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/console/api/idle")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=60)
    args = ap.parse_args()
    raise_nofile()
    conns, errors = [], []
    sem = asyncio.Semaphore(256)
    t0 = time.monotonic()
    await asyncio.gather(*(one(args.port, args.path, sem, conns, errors) for _ in range(args.conns)))
    took = time.monotonic() - t0
    print("READY %d %d" % (len(conns), len(errors)), flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    except asyncio.TimeoutError:
        pass
    # Still open? A proxy that dropped idle connections shows up here.
    alive = 0
    for w in conns:
        sock = w.get_extra_info("socket")
        try:
            if sock is not None and sock.fileno() >= 0:
                raw = socket.socket(fileno=sock.fileno())
                try:
                    raw.setblocking(False)
                    try:
                        alive += 0 if raw.recv(1, socket.MSG_PEEK) == b"" else 1
                    except BlockingIOError:
                        alive += 1
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                finally:
                    raw.detach()
        except OSError:
            pass
        w.close()
    await asyncio.sleep(0.2)
    print(json.dumps({"opened": len(conns), "failed": len(errors), "open_s": round(took, 2),
                      "still_open_at_end": alive, "error_samples": [str(e) for e in errors[:5]]}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
