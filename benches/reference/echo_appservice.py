"""A minimal echo appservice written with mautrix-python, the reference the e2e and
memory benchmarks compare mosaic-as against.

Its bot user (the registration's sender_localpart) joins every room it is invited to and
answers each m.room.message from someone else, in a room it has joined, with the same
body as a reply: what mosaic-as's built-in echo agent does. State (room members, power
levels) lives in mautrix's in-memory state store; nothing is persisted, which makes each
message cheaper than in mosaic-as, which stores every pushed event durably first.

    python echo_appservice.py --registration FILE --homeserver URL --server-name NAME

The registration is read as JSON (a JSON file is valid YAML, so the homeserver reads the
same file); the service listens on the port of its `url`. `GET /bench/stats` answers how
many rooms and members the state store holds and how many events were handled, so a
benchmark can tell when pushed transactions have been processed.
"""

import argparse
import asyncio
import json
import logging
import signal
from urllib.parse import urlparse

from aiohttp import web
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import (
    Event,
    EventType,
    Membership,
    MessageType,
    TextMessageEventContent,
)


class MemoryASStateStore(ASStateStore, MemoryStateStore):
    """mautrix's in-memory client state store plus the appservice's registered users."""

    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registration", required=True)
    parser.add_argument("--homeserver", required=True, help="client-server API URL")
    parser.add_argument("--server-name", required=True)
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    with open(args.registration) as f:
        registration = json.load(f)
    listen = urlparse(registration["url"])
    state_store = MemoryASStateStore()
    appservice = AppService(
        server=args.homeserver,
        domain=args.server_name,
        as_token=registration["as_token"],
        hs_token=registration["hs_token"],
        bot_localpart=registration["sender_localpart"],
        id=registration["id"],
        state_store=state_store,
    )
    bot = appservice.bot_mxid
    handled = 0

    @appservice.matrix_event_handler
    async def on_event(evt: Event) -> None:
        nonlocal handled
        handled += 1
        if evt.type == EventType.ROOM_MEMBER:
            if evt.state_key == bot and evt.content.membership == Membership.INVITE:
                await appservice.intent.join_room_by_id(evt.room_id)
        elif evt.type == EventType.ROOM_MESSAGE and evt.sender != bot:
            if not await state_store.is_joined(evt.room_id, bot):
                return
            body = getattr(evt.content, "body", "") or "(empty message)"
            reply = TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
            reply.set_reply(evt)
            await appservice.intent.send_message(evt.room_id, reply)

    async def stats(_: web.Request) -> web.Response:
        members = sum(len(m) for m in state_store.members.values())
        body = {"rooms": len(state_store.members), "members": members, "events": handled}
        return web.json_response(body)

    appservice.app.router.add_route("GET", "/bench/stats", stats)
    await appservice.start(host=listen.hostname, port=listen.port)
    try:
        await appservice.intent.ensure_registered()
    except Exception:
        logging.getLogger("refecho").exception("cannot register %s; invites will fail", bot)
    appservice.ready = True
    logging.getLogger("refecho").info("listening on %s as %s", registration["url"], bot)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await appservice.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main())
