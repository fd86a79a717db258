"""A Modbus/TCP device for the agent's tests: a pymodbus server whose
registers change over time, recording every function code it receives.

Usage: python3 modbus_device.py --port PORT --record FILE

The register map (the agent's tests configure the same tags):

  holding 0        u16   cycle counter, +1 every second
  holding 1        u16   mode: 1 (RUN) for 4 s, then 2 (STOP) for 4 s, ...
  holding 10-11    f32   ABCD   21.5
  holding 12-13    u32   CDAB   305419896 (0x12345678)
  holding 14       i16          -1234
  holding 15       u16          tenths of a second since start, a ramp
  holding 16-19    f64   DCBA   -9876.54321
  holding 20-23    u64   ABCD   2**40 + 7
  holding 24-25    i32   BADC   -100000
  holding 26-27    f32   ABCD   NaN (a bad value)
  input 0          u16          2305
  coil 0                        on for 2 s, off for 2 s, ...
  discrete input 0              on

It answers every unit id (one register map for all), and holding registers
28-127 read as 0, so one process can stand for many devices of 100 tags
(the agent's footprint measurement polls 50 unit ids of it).

Values are packed with Python's struct module, independently of the agent's
decoder. Each function code received is appended to FILE the first time it
is seen, so a test can assert that only reads arrived.
"""

import argparse
import asyncio
import struct
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice, DataType

START = time.monotonic()


def words(fmt, value, order):
    """The registers of `value` packed big-endian with struct `fmt`, then
    arranged in one of the byte orders devices use (ABCD, CDAB, BADC, DCBA,
    extended to 64 bits as ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA)."""
    raw = struct.pack(">" + fmt, value)
    regs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        regs.reverse()
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


CONSTANT_HOLDING = {
    10: words("f", 21.5, "ABCD"),
    12: words("I", 305419896, "CDAB"),
    14: words("h", -1234, "ABCD"),
    16: words("d", -9876.54321, "DCBA"),
    20: words("Q", 2**40 + 7, "ABCD"),
    24: words("i", -100000, "BADC"),
    26: words("f", float("nan"), "ABCD"),
}


def holding_now():
    t = time.monotonic() - START
    regs = {0: [int(t) % 65536], 1: [1 if int(t / 4) % 2 == 0 else 2], 15: [int(t * 10) % 65536]}
    regs.update(CONSTANT_HOLDING)
    return regs


async def action(function_code, start_address, address, count, registers, set_values):
    """Refreshes the time-driven values before each access."""
    t = time.monotonic() - START
    if function_code == 3:
        for first, values in holding_now().items():
            for i, v in enumerate(values):
                registers[first + i - start_address] = v
    elif function_code == 1:
        # Coils are packed 16 to a register, bit 0 first.
        on = int(t / 2) % 2 == 0
        index = 0 - start_address
        registers[index] = (registers[index] & ~1) | (1 if on else 0)
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    seen = set()

    def trace_pdu(sending, pdu):
        if not sending and pdu.function_code not in seen:
            seen.add(pdu.function_code)
            with open(args.record, "a") as f:
                f.write(f"{pdu.function_code}\n")
        return pdu

    holding = [SimData(0, count=128, values=0, datatype=DataType.REGISTERS)]
    inputs = [SimData(0, values=[2305] + [0] * 15, datatype=DataType.REGISTERS)]
    coils = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    discrete = [SimData(0, values=[True] + [False] * 15, datatype=DataType.BITS)]
    device = SimDevice(
        id=0,
        simdata=(coils, discrete, holding, inputs),
        use_bit_addressing=True,
        action=action,
    )

    async def serve():
        server = ModbusTcpServer(device, address=("127.0.0.1", args.port), trace_pdu=trace_pdu)
        print(f"modbus device listening on 127.0.0.1:{args.port}", flush=True)
        await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
