# Propagation latency: from `kubectl patch` of a Rule returning to the first dry-run dispatch on
# BOTH gateways that sees the change. Prerequisites (see tests/e2e/README.md): a kube env
# (`kube-env.sh start DIR; . DIR/env`), CRDs + chart RBAC applied, namespace `bench` holding
# Provider `out` (type log) and Rule `r` (condition action_type == alert), the operator running
# with `--namespaces bench` and two gateways on ports 18191/18192 following the same state prefix.
#   python3 tests/e2e/bench-propagation.py
import json, subprocess, time, urllib.request, os
def verdict(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/dispatch?dry_run=true", data=json.dumps({"namespace":"bench","tenant":"t","provider":"out","action_type":"alert","payload":{}}).encode(), headers={"content-type":"application/json"})
    return json.load(urllib.request.urlopen(req))["DryRun"]["verdict"]
lat=[]
for i in range(40):
    want = "deny" if i % 2 == 0 else "suppress"
    patch = json.dumps({"spec":{"action":{"type":want}}})
    subprocess.run(["kubectl","patch","rule","r","-n","bench","--type","merge","-p",patch], check=True, capture_output=True)
    t0=time.monotonic(); seen={}
    while len(seen)<2 and time.monotonic()-t0<5:
        for p in (18191,18192):
            if p not in seen and verdict(p)==want: seen[p]=time.monotonic()-t0
    lat.append(max(seen.values()) if len(seen)==2 else 5.0)
lat.sort()
print(f"n={len(lat)} p50={lat[len(lat)//2]*1000:.0f}ms p90={lat[int(len(lat)*0.9)]*1000:.0f}ms p99/max={lat[-1]*1000:.0f}ms")
