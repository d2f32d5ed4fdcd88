#!/usr/bin/env python3
"""SSE load client for bench scenario 3 (python3 stdlib only).

Opens --conns concurrent `GET <path>` streams to 127.0.0.1:<port>, waits until all are open,
then for --duration seconds records, for every event, receive time minus the send time the
upstream wrote into it (`data: <time.time_ns()>`). Prints one JSON object with the percentiles.
"""
import argparse
import asyncio
import json
import re
import resource
import sys
import time

NUM = re.compile(rb"data: (\d+)")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200000, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


async def stream(port, path, state, sem, measuring, stop):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\n"
                          "User-Agent: bench-sse\r\n\r\n" % (path, port)).encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except Exception as e:  # noqa: BLE001
            state["errors"].append("connect: %r" % (e,))
            return
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
    if status != b"200" or b"text/event-stream" not in head.lower():
        state["errors"].append("bad head: %r" % head[:200])
        writer.close()
        return
    state["open"] += 1
    samples = state["samples"]
    try:
        while not stop.is_set():
            data = await reader.readuntil(b"\n\n")
            now = time.time_ns()
            m = NUM.search(data)
            if m is None:
                continue
            state["events"] += 1
            if measuring.is_set():
                samples.append(now - int(m.group(1)))
    except asyncio.CancelledError:
        pass
    except Exception as e:  # noqa: BLE001
        if not stop.is_set():
            state["errors"].append("read: %r" % (e,))
    finally:
        state["open"] -= 1
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/api/chat-messages/sse")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after all streams are open before measuring")
    ap.add_argument("--connect-timeout", type=float, default=30)
    args = ap.parse_args()
    raise_nofile()
    state = {"open": 0, "events": 0, "samples": [], "errors": []}
    measuring, stop = asyncio.Event(), asyncio.Event()
    sem = asyncio.Semaphore(200)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(stream(args.port, args.path, state, sem, measuring, stop))
             for _ in range(args.conns)]
    while state["open"] + len(state["errors"]) < args.conns and time.monotonic() - t0 < args.connect_timeout:
        await asyncio.sleep(0.05)
    opened_after = time.monotonic() - t0
    await asyncio.sleep(args.settle)
    print("MEASURING open=%d" % state["open"], file=sys.stderr, flush=True)
    measuring.set()
    m0 = time.monotonic()
    min_open = state["open"]
    while time.monotonic() - m0 < args.duration:
        await asyncio.sleep(0.25)
        min_open = min(min_open, state["open"])
    measuring.clear()
    measured_for = time.monotonic() - m0
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    s = sorted(state["samples"])
    us = lambda v: None if v is None else round(v / 1000.0, 1)  # noqa: E731
    out = {
        "conns": args.conns, "opened": min_open, "open_after_s": round(opened_after, 2),
        "measured_s": round(measured_for, 2), "events_measured": len(s),
        "events_per_s": round(len(s) / measured_for, 1) if measured_for else None,
        "delay_us": {"p50": us(pct(s, 50)), "p90": us(pct(s, 90)), "p99": us(pct(s, 99)),
                     "p999": us(pct(s, 99.9)), "max": us(s[-1] if s else None)},
        "errors": len(state["errors"]), "error_samples": state["errors"][:5],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
