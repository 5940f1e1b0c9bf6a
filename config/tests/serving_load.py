"""Load generator for the serving bench, run in its own process (no Django here).

`python config/tests/serving_load.py URL [URL ...] --method POST --body '{...}' --header 'Authorization: Bearer ...'
--concurrency 32 --requests 3000 --warmup 200` sends the requests from `concurrency` clients,
each on its own keep-alive connection, and prints one JSON line: statuses, elapsed seconds and
every latency in milliseconds. A transport error counts under its exception's name. With
several URLs, client i sends to URL i, i + concurrency, ... in turn (one conversation each,
say, so no conversation's history grows with the whole run).

With `--rate R` the load is open, not closed: request k is due at k/R seconds, whether or not
earlier ones have been answered, and the next free client sends it (at most `concurrency` in
flight). Its latency counts from when it was due, so time spent waiting for a free client is
counted too (no coordinated omission). Below the server's capacity this measures what a request
costs at that load; a closed loop at full load measures queueing (Little's law: p50 is about
`concurrency` divided by the throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

        async def send_paced(client_n: int, start: float, due: itertools.count, total: int, latencies: list, statuses: dict) -> None:
            urls = args.url[client_n % len(args.url) :: args.concurrency] or args.url
            for k in range(total):
                n = next(due)
                if n >= total:
                    return
                at = start + n / args.rate
                if (wait := at - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                try:
                    status = (await client.request(args.method, urls[k % len(urls)], headers=headers, content=content)).status_code
                except httpx.TransportError as exc:
                    status = f"{type(exc).__name__}"
                latencies.append((time.perf_counter() - at) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        async def phase(total: int) -> tuple[list, dict, float]:
            latencies, statuses = [], {}
            t = time.perf_counter()
            if args.rate:
                due = itertools.count()
                await asyncio.gather(*(send_paced(i, t, due, total, latencies, statuses) for i in range(args.concurrency)))
            else:
                share = [total // args.concurrency + (1 if i < total % args.concurrency else 0) for i in range(args.concurrency)]
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
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s, open loop; 0: closed loop (each client sends when answered)")
    args = parser.parse_args(argv)
    if args.rate < 0:
        parser.error(f"--rate is requests per second, 0 or more (0: a closed loop); got {args.rate:g}.")
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
