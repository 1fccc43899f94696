"""What a deploy into moto's server left behind, as JSON: ``deploy_local_report.py OUTDIR``.

- ``stacks``: each stack's status;
- ``assets``: every file asset the cloud assembly lists (``*.assets.json``) and whether
  its object is in the bootstrap bucket;
- ``resources``: per resource type of the templates, how many the templates declare, how
  many moto's CloudFormation created, and how many ``scripts/moto_server.py`` stood in for
  (the types moto does not implement, and custom resources).

Exits 1 when a stack is not ``CREATE_COMPLETE`` or an asset was not uploaded.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import urllib.request
from pathlib import Path

import boto3


def report(out: Path) -> dict:
    assembly = out / "cdk.out"
    cfn, s3 = boto3.client("cloudformation"), boto3.client("s3")
    stacks, declared, created = {}, collections.Counter(), collections.Counter()
    for template in sorted(assembly.glob("*.template.json")):
        name = template.name.removesuffix(".template.json")
        status = cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
        stacks[name] = status
        for resource in json.loads(template.read_text()).get("Resources", {}).values():
            declared[resource["Type"]] += 1
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=name):
            for r in page["StackResourceSummaries"]:
                if r.get("PhysicalResourceId"):
                    created[r["ResourceType"]] += 1
    assets = {"expected": 0, "uploaded": 0, "missing": []}
    for manifest in sorted(assembly.glob("*.assets.json")):
        for asset_id, asset in json.loads(manifest.read_text()).get("files", {}).items():
            for dest in asset["destinations"].values():
                bucket = dest["bucketName"].replace("${AWS::AccountId}", "123456789012") \
                    .replace("${AWS::Region}", "us-east-1")
                assets["expected"] += 1
                try:
                    s3.head_object(Bucket=bucket, Key=dest["objectKey"])
                    assets["uploaded"] += 1
                except s3.exceptions.ClientError:
                    assets["missing"].append(f"{asset['source'].get('path')} -> "
                                             f"s3://{bucket}/{dest['objectKey']}")
    endpoint = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
    with urllib.request.urlopen(f"{endpoint}/neo-edge/placeholders") as response:
        placeholders = collections.Counter(p["type"] for p in json.load(response))
    types = {t: {"declared": n, "created": created.get(t, 0) - placeholders.get(t, 0),
                 "placeholders": placeholders.get(t, 0)} for t, n in sorted(declared.items())}
    return {"stacks": stacks, "assets": assets, "resources": types,
            "not_created_by_moto": sorted(t for t, v in types.items() if v["created"] < v["declared"])}


def main(argv: list) -> int:
    result = report(Path(argv[1]))
    print(json.dumps(result, indent=2))
    bad = [n for n, s in result["stacks"].items() if s != "CREATE_COMPLETE"]
    if bad or result["assets"]["missing"] or not result["assets"]["expected"]:
        print(f"deploy-local: stacks not complete: {bad}; assets missing: "
              f"{result['assets']['missing']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
