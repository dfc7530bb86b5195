#!/usr/bin/env python3
"""A TCP proxy that adds a round-trip time: every chunk is passed on half the RTT after it came,
in each direction, in order (a link's latency, not its bandwidth). For bench/remote.sh, where the
kernel has no netem: BENCH_RTT_MS puts this in front of the remote host's SSH port.

    delay-proxy.py LISTEN_PORT TARGET_PORT RTT_MS      (both on 127.0.0.1; runs until killed)
"""
import asyncio
import socket
import sys


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk delivered `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delay, data or None))
            if not data:
                break
    except OSError:
        await queue.put((loop.time(), None))
    await sender


async def main(listen, target, rtt_ms):
    delay = rtt_ms / 2000

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, server_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            pump(client_reader, server_writer, delay),
            pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )
        for w in (client_writer, server_writer):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
