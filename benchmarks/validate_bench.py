"""Batch validation rate: `BatchDecoder` (with Arrow output) against plain pydantic.

Generates realistic metering events (`ingest.sample`, ~400 bytes each) and times, on the same
bytes in the same run:
  - baseline: pydantic `model_validate_json` of each message (no Arrow table built);
  - `BatchDecoder.decode` on batches of `--batch` messages, including building the Arrow tables,
    as the service runs it (the native fast path, `schemas/_fastjson.c`, when built);
  - the same without the native path (the msgspec Structs derived from the models), for reference.
Single-threaded (one core). Prints events/s for each and the ratio to pydantic.

    python benchmarks/validate_bench.py --events 1000000
"""

import argparse
import gc
import os
import time

from ingest.sample import SampleShape, SampleTraffic
from schemas import BatchDecoder, event_types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    args = parser.parse_args()

    print(f"generating {args.events:,} events ...", flush=True)
    values = list(SampleTraffic(SampleShape(models=1_000, contributors=10_000)).metered(args.events))
    mean_bytes = sum(map(len, values)) / len(values)
    model = event_types["ai.inference.metered.v1"].envelope_model
    decoder = BatchDecoder()
    python_decoder = BatchDecoder(use_native=False)

    def run_pydantic() -> float:
        started = time.perf_counter()
        for value in values:
            model.model_validate_json(value)
        return time.perf_counter() - started

    def run(batch_decoder: BatchDecoder) -> float:
        started = time.perf_counter()
        valid = 0
        for start in range(0, len(values), args.batch):
            valid += batch_decoder.decode(values[start : start + args.batch]).valid_count
        elapsed = time.perf_counter() - started
        assert valid == len(values), valid
        return elapsed

    pydantic_s = min(_timed(run_pydantic) for _ in range(args.repeats))
    decoder_s = min(_timed(lambda: run(decoder)) for _ in range(args.repeats))
    python_s = min(_timed(lambda: run(python_decoder)) for _ in range(args.repeats))
    pydantic_rate, decoder_rate, python_rate = (args.events / s for s in (pydantic_s, decoder_s, python_s))
    print(f"machine: cores={os.cpu_count()} load={os.getloadavg()[0]:.1f}; events: {args.events:,}, "
          f"mean {mean_bytes:.0f} bytes; batches of {args.batch:,}; best of {args.repeats}")
    print(f"pydantic model_validate_json per event (no Arrow): {pydantic_rate:,.0f} events/s "
          f"({1e6 / pydantic_rate:.2f} us/event)")
    print(f"BatchDecoder.decode incl. Arrow tables (native={decoder.native}): {decoder_rate:,.0f} events/s "
          f"({1e6 / decoder_rate:.2f} us/event)")
    print(f"  without the native path (msgspec Structs):       {python_rate:,.0f} events/s "
          f"({1e6 / python_rate:.2f} us/event), ratio {python_rate / pydantic_rate:.2f}")
    print(f"ratio decoder/pydantic: {decoder_rate / pydantic_rate:.2f} (target >= 2; and >= 700,000 events/s)")


def _timed(run) -> float:
    gc.collect()
    return run()


if __name__ == "__main__":
    main()
