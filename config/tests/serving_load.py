"""Load generator for the serving bench, run in its own process (no Django here).

`python config/tests/serving_load.py URL [URL ...] --method POST --body '{...}' --header 'Authorization: Bearer ...'
--concurrency 32 --requests 3000 --warmup 200` sends the requests from `concurrency` clients,
each on its own keep-alive connection, and prints one JSON line: statuses, elapsed seconds and
every latency in milliseconds. A transport error counts under its exception's name. With
several URLs, client i sends to URL i, i + concurrency, ... in turn (one conversation each,
say, so no conversation's history grows with the whole run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx


async def _run(args) -> dict:
    headers = dict(h.split(": ", 1) for h in args.header)
    content = args.body.encode() if args.body else None
    if content:
        headers.setdefault("Content-Type", "application/json")
    # Idle connections are dropped before the server's keep-alive (gunicorn: 2 s) could close one under a request.
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency, keepalive_expiry=1.0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def send(client_n: int, n: int, latencies: list, statuses: dict) -> None:
            urls = args.url[client_n % len(args.url) :: args.concurrency] or args.url
            for k in range(n):
                t = time.perf_counter()
                try:
                    status = (await client.request(args.method, urls[k % len(urls)], headers=headers, content=content)).status_code
                except httpx.TransportError as exc:  # counted, not fatal: the report says how many
                    status = f"{type(exc).__name__}"
                latencies.append((time.perf_counter() - t) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        async def phase(total: int) -> tuple[list, dict, float]:
            latencies, statuses = [], {}
            share = [total // args.concurrency + (1 if i < total % args.concurrency else 0) for i in range(args.concurrency)]
            t = time.perf_counter()
            await asyncio.gather(*(send(i, n, latencies, statuses) for i, n in enumerate(share)))
            return latencies, statuses, time.perf_counter() - t

        await phase(args.warmup)  # connections open, workers and pools warm
        latencies, statuses, elapsed = await phase(args.requests)
    return {"elapsed_s": elapsed, "statuses": statuses, "latencies_ms": latencies}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="+")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    print(json.dumps(asyncio.run(_run(parser.parse_args(argv)))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
