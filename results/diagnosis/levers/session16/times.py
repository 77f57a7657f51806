import json, sys
for d in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    rows = [r for r in rows if "time_step_s" in r][1:]
    keys = [k for k in rows[0] if k.startswith("time_")]
    print(d, {k.replace("time_","").replace("_s",""): round(sum(r[k] for r in rows)/len(rows), 2) for k in keys})
