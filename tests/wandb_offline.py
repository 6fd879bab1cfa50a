"""Read a W&B offline run file (`run-<id>.wandb`) in the tests: W&B's own protobuf records in its
log format (a 7-byte header; 32 KiB blocks of chunks with a crc32, length, type header). Read in a
child process: importing wandb patches this process's stdout, which pytest's capture then trips on."""

import json
import subprocess
import sys

READER = r"""
import json, sys
from wandb.proto import wandb_internal_pb2

data, pos, pending = open(sys.argv[1], "rb").read(), 7, b""
out = {"config": {}, "history": []}
assert data[:4] == b":W&B"
while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
        pos += 32768 - pos % 32768
        continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
    if pos + 7 + length > len(data):  # a chunk the writer has not flushed yet
        break
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind not in (1, 4):  # not yet the full record, or its last chunk
        continue
    record = wandb_internal_pb2.Record()
    record.ParseFromString(pending)
    pending, which = b"", record.WhichOneof("record_type")
    if which == "run":
        out.update(run_id=record.run.run_id, run_group=record.run.run_group, display_name=record.run.display_name)
        out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    elif which == "config":
        out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
    elif which == "history":
        out["history"].append([record.history.step.num, {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                                         for i in record.history.item}])
print(json.dumps(out))
"""


def read_run(path) -> dict:
    """{run_id, run_group, display_name, config, history: [[step, {key: value}], ...]} of one file."""
    proc = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)
