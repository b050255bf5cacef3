"""Addressed delivery on the Socket.IO Redis bus, shared by signal-service and relay-service.

Every signal-service instance subscribes two channels: the shared `<SOCKETIO_CHANNEL>` (true
broadcasts, and the emits of instances older than addressed delivery) and its own
`<SOCKETIO_CHANNEL>#<INSTANCE_ID>`. An emit to wallets' rooms (`rtc:<wallet>`, `user:<wallet>`)
is published only on the channels of the instances that hold those wallets' sockets, as presence
records them (`presence:conn:<wallet>`: sid -> "<instance>|<rtc 0/1>"), so an instance holding
neither party never receives it. One script reads the placement and publishes, atomically, in
one round trip; each instance gets one message naming only the rooms it holds.

Messages keep python-socketio's pub/sub format (JSON; encoded with orjson), so the stock
listener delivers them. An owner whose own channel has no subscriber (an instance from before
addressed delivery, during a rolling upgrade, or one whose listener is reconnecting) gets the
message on the shared channel instead, marked `"addressed":1`: older instances deliver it,
addressed ones skip it (they got their copy on their own channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from .batching import batcher_for

PRESENCE_PREFIX = "presence:"
WALLET_ROOM_PREFIXES = ("rtc:", "user:")
# The suffix of a fallback copy on the shared channel (see the module docstring).
ADDRESSED_SUFFIX = b',"addressed":1}'
_ROOMS_MARK = '"__rooms__"'


def conn_key(wallet: str) -> str:
    """Presence's hash of a wallet's live sockets on every instance."""
    return f"{PRESENCE_PREFIX}conn:{wallet}"


def instance_channel(channel: str, instance_id: str) -> str:
    """The channel only `instance_id`'s listener subscribes to."""
    return f"{channel}#{instance_id}"


class Codec:
    """python-socketio's `json` hook: orjson, several times faster than json on the bus."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    @staticmethod
    def loads(data: str | bytes) -> Any:
        return orjson.loads(data)


def wallet_of_room(room: Any) -> str | None:
    if isinstance(room, str):
        for prefix in WALLET_ROOM_PREFIXES:
            if room.startswith(prefix):
                return room[len(prefix) :]
    return None


def emit_message(
    event: str, data: Any, *, namespace: str, host_id: str, skip_sid: Any = None
) -> tuple[bytes, bytes]:
    """python-socketio's pub/sub emit message, split where its room list goes."""
    args = list(data) if isinstance(data, tuple) else [data]
    encoded = orjson.dumps(
        {
            "method": "emit",
            "event": event,
            "data": args,
            "binary": False,
            "namespace": namespace,
            "room": "__rooms__",
            "skip_sid": skip_sid,
            "callback": None,
            "host_id": host_id,
        }
    )
    head, _, tail = encoded.partition(_ROOMS_MARK.encode())
    return head, tail


# KEYS[i]: the presence hash of wallet i. ARGV: 1 channel, 2 this instance ('' for none: every
# owner is remote), 3 message head, 4 message tail, 5 '1' to count RTC-capable sockets only,
# 6 the fallback copy's tail (ADDRESSED_SUFFIX), 6+i: the room of wallet i. Publishes to every
# other instance holding a socket of these wallets one message with the rooms it holds; rooms
# whose instance has no subscriber on its own channel go once to the shared channel, marked.
# Returns {instances reached, instances not subscribed}.
_FAN_OUT = """
local channel, me, head, tail, rtc_only = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local per, order = {}, {}
for i, key in ipairs(KEYS) do
  local room = ARGV[6 + i]
  for _, v in ipairs(redis.call('HVALS', key)) do
    if not rtc_only or string.sub(v, -2) == '|1' then
      local owner = string.sub(v, 1, -3)
      if owner ~= me then
        local rooms = per[owner]
        if rooms == nil then
          rooms = {}
          per[owner] = rooms
          table.insert(order, owner)
        end
        if rooms[#rooms] ~= room then table.insert(rooms, room) end
      end
    end
  end
end
local reached, missed, stray = 0, 0, {}
for _, owner in ipairs(order) do
  local rooms = per[owner]
  if redis.call('PUBLISH', channel .. '#' .. owner, head .. cjson.encode(rooms) .. tail) > 0 then
    reached = reached + 1
  else
    missed = missed + 1
    for _, room in ipairs(rooms) do table.insert(stray, room) end
  end
end
if missed > 0 then
  redis.call('PUBLISH', channel, head .. cjson.encode(stray) .. string.sub(tail, 1, -2) .. ARGV[6])
end
return {reached, missed}
"""

# A signal's route, and its delivery, in one round trip. KEYS: 1 the target's presence hash,
# 2 the sender's dedup key. ARGV: 1 channel, 2 dedup seconds, 3 this instance, 4 the message.
# Returns {reachable, remote, listening, first}: reachable, the target has an RTC-capable
# socket; remote, one of them is on another instance; listening, every such instance's own
# channel has a subscriber (checked before anything is written, so a signal is published, and
# its dedup key set, only when every instance holding the target receives it); first, the
# signalId was new (published only then).
_ROUTE_SIGNAL = """
local reachable = 0
local owners, order = {}, {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  if string.sub(v, -2) == '|1' then
    reachable = 1
    local owner = string.sub(v, 1, -3)
    if owner ~= ARGV[3] and not owners[owner] then
      owners[owner] = true
      table.insert(order, owner)
    end
  end
end
if reachable == 0 then return {0, 0, 0, 0} end
for _, owner in ipairs(order) do
  if redis.call('PUBSUB', 'NUMSUB', ARGV[1] .. '#' .. owner)[2] < 1 then
    return {1, 1, 0, 0}
  end
end
local remote = 0
if #order > 0 then remote = 1 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return {1, remote, 1, 0} end
for _, owner in ipairs(order) do
  redis.call('PUBLISH', ARGV[1] .. '#' .. owner, ARGV[4])
end
return {1, remote, 1, 1}
"""


@dataclass(frozen=True)
class SignalRoute:
    reachable: bool
    remote: bool
    listening: bool  # every other instance holding the wallet's sockets listens now
    first: bool  # the signalId was new: the signal was published to those instances


@dataclass(frozen=True)
class FanOut:
    reached: int  # instances that received their message on their own channel
    missed: int  # instances whose copy went to the shared channel instead


class AddressedBus:
    """Publishes emits for wallets' rooms to the instances holding them (calls are batched)."""

    def __init__(self, redis: Redis, channel: str, instance_id: str = "") -> None:
        self.channel = channel
        self.instance_id = instance_id
        self._fan_out = redis.register_script(_FAN_OUT)
        self._route_signal = redis.register_script(_ROUTE_SIGNAL)
        self._batcher = batcher_for(redis)

    async def fan_out(
        self,
        wallets: Sequence[str],
        rooms: Sequence[str],
        message: tuple[bytes, bytes],
        *,
        rtc_only: bool = False,
    ) -> FanOut:
        head, tail = message
        reached, missed = await self._batcher.run(
            self._fan_out,
            [conn_key(w) for w in wallets],
            [
                self.channel,
                self.instance_id,
                head,
                tail,
                "1" if rtc_only else "0",
                ADDRESSED_SUFFIX,
                *rooms,
            ],
        )
        return FanOut(int(reached), int(missed))

    async def route_signal(
        self, wallet: str, message: tuple[bytes, bytes], *, dedup_key: str, dedup_seconds: int
    ) -> SignalRoute:
        head, tail = message
        room = orjson.dumps(f"rtc:{wallet}")
        reachable, remote, listening, first = await self._batcher.run(
            self._route_signal,
            [conn_key(wallet), dedup_key],
            [self.channel, dedup_seconds, self.instance_id, head + room + tail],
        )
        return SignalRoute(bool(reachable), bool(remote), bool(listening), bool(first))
