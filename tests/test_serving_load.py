"""Load on loopback: 64 concurrent clients send 500 requests with images to a real ``llavakit serve``.

No 5xx, and every answer equals the answer to the same request sent alone (greedy and seeded
sampling with different settings share batches). The request mix, the client and the report come
from ``bench/serve_load.py``, which also compares batched against one-at-a-time serving.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from test_serving_support import tiny_checkpoint

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_500_requests_from_64_clients_no_errors_no_mixed_up_answers():
    bench = load_bench()
    pool = bench.request_pool(48)
    assert sum("image_url" in json.dumps(body) for body in pool) > 30
    # One torch thread: intra-op threads only fight the clients and the HTTP server for 2 cores.
    report = bench.measure(tiny_checkpoint(), "batched", pool, requests=500, clients=64, extra_flags=["--threads", "1"])
    bench.print_table([report])
    if os.environ.get("LLAVAKIT_TEST_ARTIFACTS"):
        Path(os.environ["LLAVAKIT_TEST_ARTIFACTS"], "serve_load.json").write_text(json.dumps(asdict(report), indent=2))
    assert report.requests == 500 and report.ok == 500, report.examples
    assert report.server_errors == 0 and report.other_errors == 0, report.examples
    assert report.mismatched == 0, report.examples
    assert report.p99_latency_s >= report.p50_latency_s > 0 and report.requests_per_s > 0
