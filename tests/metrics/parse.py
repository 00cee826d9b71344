"""Parses Prometheus text on stdin with the official client's parser and prints
JSON: {family: {"type": ..., "help": ..., "samples": [[name, labels, value], ...]}}.
A parse error exits non-zero with the parser's message."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {
        "type": fam.type,
        "help": fam.documentation,
        "samples": [[s.name, s.labels, s.value] for s in fam.samples],
    }
json.dump(out, sys.stdout)
