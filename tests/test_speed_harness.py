"""The speed harness (benchmarks/speed.py) runs each of its three studies end to end at a tiny
size and writes the records the results pages read (docs/results/throughput.md, qpilots.md)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_study_writes_the_record_its_page_reads(speed, tmp_path):
    agents, qpilots, policy = (tmp_path / f"{n}.json" for n in ("agents", "qpilots", "policy"))
    speed.main(["agents", "--agents", "bc-fm", "--sizes", "cpu", "--seconds", "0.05", "--calls", "3", "--transitions", "3000",
                "--out", str(agents)])
    speed.main(["qpilots", "--agents", "bc-fm", "--seconds", "0.05", "--calls", "3", "--transitions", "3000",
                "--out", str(qpilots)])
    speed.main(["policy", "--agents", "bc-mf", "--calls", "20", "--warmup", "2", "--out", str(policy)])
    row = json.loads(agents.read_text())["rows"][0]
    assert row["agent"] == "bc-fm" and row["train_steps_per_s_cpu"] > 0 and row["act_p99_ms"] >= row["act_p50_ms"] > 0
    row = json.loads(qpilots.read_text())["rows"][0]
    assert row["overrides"] == {"flow": "qpilots"} and row["train_steps_per_s"] > 0 and row["act_b50_p50_ms"] > 0
    record = json.loads(policy.read_text())
    assert {r["form"] for r in record["rows"]} == {"jax", "stablehlo", "onnx-1t", "onnx-2t"}
    assert all(r["stepper_steps_per_s"] > 0 and r["batch16"]["calls"] >= 20 for r in record["rows"])
    assert record["device"] and record["commit"]
