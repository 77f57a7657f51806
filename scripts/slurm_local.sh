#!/usr/bin/env bash
# A real single-node Slurm on localhost for tests and demos: run as root, no systemd needed
# (Debian 12, Slurm 22.05). Accounting goes through slurmdbd on a private MariaDB because
# submitit reads job states with `sacct`.
#
#   scripts/slurm_local.sh install   # Debian packages (idempotent, ~1 s when installed)
#   scripts/slurm_local.sh start     # munged, mariadbd, slurmdbd, slurmctld, slurmd; waits for an idle node
#   scripts/slurm_local.sh stop      # reverse order, by pid files
#   scripts/slurm_local.sh status    # one line per daemon; exit 0 only if all are up
#   scripts/slurm_local.sh env       # prints `export SLURM_CONF=...` for client commands
#
# Everything (configs, logs, pid files, spool, database) lives in $SAGE_SLURM_DIR
# (default /var/lib/sage-slurm). /etc/slurm/slurm.conf is made a symlink to our config so that
# sbatch/sacct find it without SLURM_CONF, unless a foreign file is already there.
# Knobs: SAGE_SLURM_PARTITION (default "debug"), SAGE_SLURM_DB_PORT (default 16306),
# SAGE_SLURM_WAIT_S (default 60).
set -euo pipefail

STATE=${SAGE_SLURM_DIR:-/var/lib/sage-slurm}
PARTITION=${SAGE_SLURM_PARTITION:-debug}
DB_PORT=${SAGE_SLURM_DB_PORT:-16306}
WAIT_S=${SAGE_SLURM_WAIT_S:-60}
CLUSTER=sage
ACCOUNT=sage
ETC=$STATE/etc
LOG=$STATE/log
RUN=$STATE/run
DB_DIR=$STATE/mysql
DB_RUN=$STATE/mysqld-run # owned by the mysql user: socket and pid file
DB_SOCK=$DB_RUN/mysqld.sock
CONF=$ETC/slurm.conf
MUNGE_PID=/run/munge/munged.pid
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
export SLURM_CONF=$CONF

die() {
  echo "slurm_local: ERROR: $*" >&2
  exit 1
}
log() { echo "slurm_local: $*"; }

need_root() {
  [[ $(id -u) == 0 ]] || die "'$1' must run as root (it starts system daemons); try: sudo bash $0 $1"
}

# --- install -------------------------------------------------------------------------------
missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

cmd_install() {
  need_root install
  local missing
  missing=$(missing_packages)
  if [[ -z $missing ]]; then
    log "packages already installed: ${PACKAGES[*]}"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' post-install scripts from starting daemons at their default paths:
  # we start our own, configured ones. policy-rc.d exit 101 = "action forbidden".
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # shellcheck disable=SC2086
  if ! apt-cache show $missing >/dev/null 2>&1; then
    apt-get update -q -o DPkg::Lock::Timeout=120
  fi
  # shellcheck disable=SC2086
  if ! apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends $missing; then
    log "install failed; refreshing the package lists and retrying once"
    apt-get update -q -o DPkg::Lock::Timeout=120
    # shellcheck disable=SC2086
    apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends $missing
  fi
  [[ -z $(missing_packages) ]] || die "packages still missing after apt-get: $(missing_packages | tr '\n' ' ')"
  log "installed: $missing" | tr '\n' ' '
  echo
}

# --- helpers -------------------------------------------------------------------------------
# pid_alive PIDFILE NAME: the pid file names a live process whose command is NAME (no stale pids).
pid_alive() {
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm") == "$2" ]]
}

# wait_for SECONDS WHAT PID CMD...: poll CMD every 0.2 s until it succeeds or time runs out;
# give up at once if PID (when not empty) has exited.
wait_for() {
  local secs=$1 what=$2 pid=$3 i
  shift 3
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    [[ -z $pid || -d /proc/$pid ]] || fail "$what exited during start-up"
    sleep 0.2
  done
  fail "$what did not come up within ${secs} s"
}

fail() {
  echo "slurm_local: ERROR: $*" >&2
  local f
  for f in "$LOG"/*.log; do
    [[ -s $f && $f != */mariadb-install.log ]] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 15 "$f" >&2
  done
  echo "slurm_local: logs are in $LOG; state in $STATE" >&2
  exit 1
}

check_installed() {
  local b
  for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr sinfo; do
    command -v "$b" >/dev/null || die "'$b' not found: run 'bash $0 install' first (as root)"
  done
}

# --- config --------------------------------------------------------------------------------
write_configs() {
  local cpus mem_mb real_mb
  # Not plain nproc: it obeys OMP_NUM_THREADS, which tests set to 1.
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  mem_mb=$(($(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024))
  # Leave 10% (at least 512 MB) to the OS: slurmd marks the node invalid if RealMemory
  # exceeds what it measures.
  real_mb=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))
  ((real_mb > 256)) || die "only ${mem_mb} MB of memory; need more than 768 MB"
  mkdir -p "$ETC" "$LOG" "$RUN" "$STATE/slurmctld" "$STATE/slurmd"
  chmod 755 "$STATE" "$ETC" "$LOG" "$RUN"

  [[ -s $ETC/db.pass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.pass")

  cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm_local.sh: single node on localhost, no cgroups.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# No cgroups (containers, no systemd): track by /proc, no task binding; memory is not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Schedule at once (batch_sched_delay, default 3 s) and rescan pending jobs every 2 s (default
# 60 s; a requeued job becoming eligible waits for this scan).
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# Jobs without --mem get an equal share per CPU, so that 1-CPU jobs can run side by side.
DefMemPerCPU=$((real_mb / cpus))
JobRequeue=1
ReturnToService=2
# SIGTERM -> SIGKILL grace on cancel/requeue (default 30 s; submitit ignores SIGTERM, so a
# requeued job runs this long before it dies) and the wait before a requeued job may start
# again (cred_expire, default 120 s): both short so that requeue tests take seconds.
KillWait=3
AuthInfo=cred_expire=10
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  CONF_CHANGED=0
  if ! cmp -s "$CONF.tmp" "$CONF"; then
    CONF_CHANGED=1
  fi
  mv "$CONF.tmp" "$CONF"

  # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF; it refuses a file that
  # is readable by others (it holds the DB password).
  (
    umask 077
    cat >"$ETC/slurmdbd.conf.tmp" <<EOF
# Written by scripts/slurm_local.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/db.pass")
StorageLoc=slurm_acct_db
EOF
  )
  mv "$ETC/slurmdbd.conf.tmp" "$ETC/slurmdbd.conf"
  chmod 600 "$ETC/slurmdbd.conf"

  # No cgroup.conf: with proctrack/linuxproc and task/none no cgroup plugin is loaded, which
  # is what makes this work in containers without systemd or a writable /sys/fs/cgroup.

  # Let client commands (sbatch, sacct, sinfo) find the config without SLURM_CONF.
  mkdir -p /etc/slurm
  if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  elif [[ $(readlink -f /etc/slurm/slurm.conf) != "$CONF" ]]; then
    log "note: /etc/slurm/slurm.conf is someone else's file; clients need: export SLURM_CONF=$CONF"
  fi
}

# --- daemons -------------------------------------------------------------------------------
start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0 # a munged (ours or the system's) already answers
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null)
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  rm -f /run/munge/munge.socket.2 "$MUNGE_PID" # stale socket from an unclean stop
  runuser -u munge -- /usr/sbin/munged 9>&- || fail "munged failed to start (see /var/log/munge/munged.log)"
  ln -sfn "$MUNGE_PID" "$RUN/munged.pid"
  wait_for 10 munged '' bash -c 'munge -n | unmunge'
}

start_mariadb() {
  if pid_alive "$DB_RUN/mariadbd.pid" mariadbd; then
    return 0
  fi
  mkdir -p "$DB_DIR" "$DB_RUN"
  chown mysql:mysql "$DB_DIR" "$DB_RUN"
  if [[ ! -d $DB_DIR/mysql ]]; then
    log "initialising MariaDB in $DB_DIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 \
      || fail "mariadb-install-db failed (see $LOG/mariadb-install.log)"
  fi
  # Private data dir, socket and port: never touches a system MariaDB on 3306. No native AIO:
  # container seccomp profiles often refuse io_uring/libaio, and speed does not matter here.
  setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$DB_RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
    --innodb-use-native-aio=0 \
    </dev/null >>"$LOG/mariadbd.log" 2>&1 9>&- &
  wait_for 30 mariadbd $! mariadb-admin --no-defaults --socket="$DB_SOCK" -u root ping
  ln -sfn "$DB_RUN/mariadbd.pid" "$RUN/mariadbd.pid"
  local pw
  pw=$(cat "$ETC/db.pass")
  mariadb --no-defaults --socket="$DB_SOCK" -u root <<EOF || fail "could not create the accounting database"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
  pid_alive "$RUN/slurmdbd.pid" slurmdbd && return 0
  slurmdbd 9>&- || fail "slurmdbd failed to start"
  wait_for 30 slurmdbd '' sacctmgr -n show cluster
}

# ensure_assoc: cluster, account and user rows, so that sacct/sreport have owners for jobs.
ensure_assoc() {
  sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed"
  sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="sage-opd tests" \
      Organization=sage >/dev/null || fail "sacctmgr add account failed"
  local u
  for u in root ${SUDO_USER:-}; do
    sacctmgr -n -P show user format=user | grep -qx "$u" \
      || sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
      || fail "sacctmgr add user $u failed"
  done
}

start_slurmctld() {
  pid_alive "$RUN/slurmctld.pid" slurmctld && return 0
  slurmctld -f "$CONF" 9>&- || fail "slurmctld failed to start"
  wait_for 30 slurmctld '' scontrol ping
}

start_slurmd() {
  pid_alive "$RUN/slurmd.pid" slurmd && return 0
  slurmd -N localhost -f "$CONF" 9>&- || fail "slurmd failed to start"
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n1; }

node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

wait_node() {
  local i state
  for ((i = 0; i < WAIT_S * 5; i++)); do
    node_ready && return 0
    state=$(node_state)
    # A previous unclean stop can leave the node down/drained: resume it once slurmd is back.
    if [[ $state == down* || $state == drain* ]] && ((i % 10 == 5)); then
      scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.2
  done
  sinfo -R >&2 || true
  fail "node 'localhost' is '$(node_state)', not idle, after ${WAIT_S} s"
}

daemons_up() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 \
    && pid_alive "$DB_RUN/mariadbd.pid" mariadbd \
    && pid_alive "$RUN/slurmdbd.pid" slurmdbd \
    && pid_alive "$RUN/slurmctld.pid" slurmctld \
    && pid_alive "$RUN/slurmd.pid" slurmd
}

# The daemons are started with fd 9 closed (9>&-), else they would inherit and hold the lock.
take_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 120 9 || die "another slurm_local.sh holds $STATE/.lock for over 120 s (lsof $STATE/.lock shows who)"
}

cmd_start() {
  need_root start
  check_installed
  take_lock
  local t0=$SECONDS
  write_configs
  if ((CONF_CHANGED)) && pid_alive "$RUN/slurmctld.pid" slurmctld; then
    # e.g. this script was updated, or the CPU count changed: the daemons must reread it.
    log "slurm.conf changed: restarting slurmctld and slurmd"
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
  elif daemons_up && node_ready; then
    log "already running (partition '$PARTITION', state in $STATE)"
    return 0
  fi
  start_munge
  start_mariadb
  start_slurmdbd
  ensure_assoc
  start_slurmctld
  start_slurmd
  wait_node
  log "up in $((SECONDS - t0)) s: partition '$PARTITION', node localhost $(sinfo -h -n localhost -o %c) CPUs; logs in $LOG"
}

# stop_pid PIDFILE NAME: TERM, wait up to 30 s, then KILL.
stop_pid() {
  local pid i
  pid_alive "$1" "$2" || return 0
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    [[ -d /proc/$pid ]] || break
    sleep 0.2
  done
  if [[ -d /proc/$pid ]]; then
    log "$2 ($pid) ignored SIGTERM for 30 s; killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  log "stopped $2"
}

cmd_stop() {
  need_root stop
  take_lock
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$DB_RUN/mariadbd.pid" mariadbd
  # Only a munged that we started (its pid file is linked from our run dir).
  if [[ -L $RUN/munged.pid ]]; then
    stop_pid "$MUNGE_PID" munged
    rm -f "$RUN/munged.pid"
  fi
}

cmd_status() {
  local ok=0 name file
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "munged     up"
  else
    echo "munged     down"
    ok=1
  fi
  for name in mariadbd slurmdbd slurmctld slurmd; do
    file=$RUN/$name.pid
    [[ $name == mariadbd ]] && file=$DB_RUN/mariadbd.pid
    if pid_alive "$file" "$name"; then
      printf '%-10s up (pid %s)\n' "$name" "$(cat "$file")"
    else
      printf '%-10s down\n' "$name"
      ok=1
    fi
  done
  if ((ok == 0)); then
    echo "node       $(node_state) (partition '$PARTITION', SLURM_CONF=$CONF)"
  fi
  return $ok
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *)
    echo "usage: $0 install|start|stop|status|env" >&2
    exit 2
    ;;
esac
