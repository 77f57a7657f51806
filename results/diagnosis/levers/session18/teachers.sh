#!/bin/bash
# Session 18 (a copy of session17/teachers.sh): teacher-only builds of curriculum variants at the default budget,
# each evaluated greedily in the student's seat on the full evaluation (140 / 134 games).
# Usage: bash teachers.sh NAME "OVERRIDES" [NAME "OVERRIDES" ...]   (logs and results beside it)
# A build stops once its teacher is saved (the student it would build next is not needed here).
cd "$(dirname "$0")/../../../.."
OUT=results/diagnosis/levers/session18
CACHE=${SAGE_OPD_CACHE:-$HOME/.cache/sage-opd}/tiny
watch_build() {  # pid name before: wait until a new teacher report appears, then stop the build
  local pid=$1 name=$2 before=$3 new=""
  while kill -0 $pid 2>/dev/null; do
    sleep 20
    new=$(comm -13 <(echo "$before") <(ls -d $CACHE/teacher-*/report.json 2>/dev/null | sort) | head -1)
    if [ -n "$new" ]; then sleep 5; kill $pid; break; fi
  done
  wait $pid 2>/dev/null
  [ -n "$new" ] || { echo "$name: no teacher built (see prepare_$name.log)" | tee -a $OUT/teachers.log; return 1; }
  evaluate $name $(dirname "$new")
}
evaluate() {  # name entry-dir
  local name=$1 entry=$2
  echo "$name teacher: $entry" | tee -a $OUT/teachers.log
  cp $entry/report.json $OUT/report_$name.json
  .venv/bin/python -m harness experiment=paper_cpu mode=eval model.student.path=$entry/teacher \
     model.teacher.path=$entry/teacher hydra.run.dir=/tmp/eval_$name > $OUT/eval_$name.log 2>&1
  cp /tmp/eval_$name/result.json $OUT/eval_${name}_result.json
  python3 -c "import json;d=json.load(open('$OUT/eval_${name}_result.json'))['eval'];print('$name', *(f\"{k} {100*v['success']:.1f}\" for k,v in d.items()))" | tee -a $OUT/teachers.log
}
run_variant() {  # name overrides...
  local name=$1; shift
  local before=$(ls -d $CACHE/teacher-*/report.json 2>/dev/null | sort)
  .venv/bin/python -u -m harness mode=prepare hydra.run.dir=/tmp/prep_$name "$@" > $OUT/prepare_$name.log 2>&1 &
  watch_build $! $name "$before"
}
if [ "$1" = "--adopt" ]; then  # --adopt PID NAME: watch a build already running
  watch_build $2 $3 "$(ls -d $CACHE/teacher-*/report.json 2>/dev/null | sort)"; shift 3
fi
while [ $# -ge 2 ]; do run_variant $1 $2; shift 2; done
